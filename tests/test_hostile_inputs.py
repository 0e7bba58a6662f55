"""Hostile input, table-driven: every case exits 2 with exactly one line on stderr that names the problem,
no traceback, and leaves every file that existed before the command byte-for-byte as it was.

Each case gets its own folder with a copy of a finished run (``done/``) and of an interrupted one
(``part/``, which has a checkpoint), so cases that touch outputs cannot disturb each other.
"""
from __future__ import annotations

import errno
import hashlib
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from taskshare import cli
from taskshare.core.serialize import load_state, save_state
from taskshare.engine.outdir import RunLock

RUN = ["run", "digits-tiny", "--method", "finetune", "--epochs", "2", "--limit", "40", "--quiet"]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """done/: a finished finetune run; part/: the same run stopped after its first checkpoint."""
    from taskshare.data import build_benchmark
    from taskshare.engine.lifelong import run_method

    root = tmp_path_factory.mktemp("hostile")
    assert cli.main([*RUN, "--out", str(root / "done")]) == 0
    cfg = cli._config(cli._parser().parse_args([*RUN, "--out", str(root / "part")]))

    def stop(_):
        raise Stop

    with pytest.raises(Stop):
        run_method(build_benchmark("digits-tiny", seed=0), "finetune", cfg, root / "part", benchmark="digits-tiny",
                   on_checkpoint=stop)
    assert (root / "part" / "finetune" / "checkpoint.safetensors").is_file()
    return root


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _image_folder(root: Path, classes: int = 2, extra: dict[str, bytes] | None = None) -> Path:
    from PIL import Image
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(root / f"c{c}" / f"{i}.png")
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def _edit_checkpoint(d: Path, edit) -> None:
    path = d / "part" / "finetune" / "checkpoint.safetensors"
    state, meta = load_state(path)
    edit(state)
    save_state(path, state, meta)


def _edit_results(d: Path, edit) -> None:
    import json
    path = d / "done" / "finetune" / "results.json"
    res = json.loads(path.read_text())
    edit(res)
    path.write_text(json.dumps(res))


def _resume(d: Path, *extra: str) -> list[str]:
    return [*RUN, "--out", str(d / "part"), "--resume", *extra]


def _first_tensor_wrong_shape(state) -> None:
    sd = state["learner"]
    key = next(k for k, v in _walk_tensors(sd))
    _set(sd, key, torch.zeros(3, 3, 3))


def _walk_tensors(obj, path=()):
    if isinstance(obj, torch.Tensor) and obj.dim() >= 1:
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_tensors(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, (*path, i))


def _set(obj, path, value) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _no_space(monkeypatch) -> None:
    import shutil as sh
    usage = sh.disk_usage("/")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage._replace(free=1024))


def _disk_full_mid_run(monkeypatch) -> None:
    """The OS refuses every file write after the training started (ENOSPC)."""
    from taskshare.core import serialize

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(serialize, "atomic_write_bytes", full)


def _locked(d: Path) -> list[str]:
    """Another run holds d/done (a second open file description in this process conflicts like a process)."""
    global _lock
    _lock = RunLock(d / "done").acquire()
    return [*RUN, "--out", str(d / "done")]


# (id, setup(d, monkeypatch) -> argv, words the message must contain)
CASES = [
    ("weight-decay-negative", lambda d, m: [*RUN, "--set", "weight_decay=-1"], "weight_decay"),
    ("momentum-negative", lambda d, m: [*RUN, "--set", "momentum=-0.5"], "momentum"),
    ("momentum-one", lambda d, m: [*RUN, "--set", "momentum=1"], "momentum"),
    ("device-tpu", lambda d, m: [*RUN, "--set", "device=tpu"], "device"),
    ("device-cuda-absent", lambda d, m: [*RUN, "--device", "cuda"], "CUDA"),
    ("lr-huge", lambda d, m: [*RUN, "--set", "lr=1e300"], "lr"),
    ("lr-zero", lambda d, m: [*RUN, "--set", "lr=0"], "lr"),
    ("lr-nan", lambda d, m: [*RUN, "--set", "lr=nan"], "lr"),
    ("option-inf", lambda d, m: [*RUN, "--set", "ewc.lambda=inf"], "ewc.lambda"),
    ("seed-huge", lambda d, m: [*RUN, "--seed", "1000000000000000000000000"], "seed"),
    ("seed-negative", lambda d, m: [*RUN, "--seed", "-1"], "seed"),
    ("epochs-zero", lambda d, m: [*RUN, "--epochs", "0"], "epochs"),
    ("limit-zero", lambda d, m: [*RUN, "--limit", "0"], "limit"),
    ("batch-size-zero", lambda d, m: [*RUN, "--set", "batch_size=0"], "batch_size"),
    ("type-mismatch", lambda d, m: [*RUN, "--set", "batch_size=abc"], "batch_size"),
    ("set-no-equals", lambda d, m: [*RUN, "--set", "batch_size"], "key=value"),
    ("unknown-key", lambda d, m: [*RUN, "--set", "nosuch=1"], "nosuch"),
    ("unknown-option", lambda d, m: [*RUN, "--set", "ewc.nosuch=1"], "ewc.nosuch"),
    ("config-not-utf8", lambda d, m: [*RUN, "--config", str(_write(d / "c.yaml", b"epochs: \xff\xfe\n"))], "UTF-8"),
    ("config-missing", lambda d, m: [*RUN, "--config", str(d / "none.yaml")], "not found"),
    ("config-folder", lambda d, m: [*RUN, "--config", str(_mkdir(d / "c.yaml"))], "not a file"),
    ("config-bad-yaml", lambda d, m: [*RUN, "--config", str(_write(d / "c.yaml", b"epochs: [1,\n"))], "parse"),
    ("config-bad-suffix", lambda d, m: [*RUN, "--config", str(_write(d / "c.ini", b"epochs=1\n"))], ".ini"),
    ("config-a-list", lambda d, m: [*RUN, "--config", str(_write(d / "c.yaml", b"- 1\n- 2\n"))], "mapping"),
    ("method-comma", lambda d, m: [*RUN, "--method", ","], "names no method"),
    ("method-empty", lambda d, m: [*RUN, "--method", ""], "names no method"),
    ("method-unknown", lambda d, m: [*RUN, "--method", "nosuch"], "nosuch"),
    ("benchmark-unknown", lambda d, m: ["run", "nosuch-bench", "--quiet"], "nosuch-bench"),
    ("imagefolder-missing", lambda d, m: ["run", f"imagefolder:{d / 'none'}", "--quiet", "--out", str(d / "o")],
     "does not exist"),
    ("imagefolder-bomb", lambda d, m: ["run", f"imagefolder:{_image_folder(d / 'img', extra={'c0/big.png': _png_header(20000, 20000)})}",
                                       "--quiet", "--out", str(d / "o")], "pixels"),
    ("imagefolder-big-under-pil-limit", lambda d, m: [
        "run", f"imagefolder:{_image_folder(d / 'img', extra={'c0/big.png': _png_header(5000, 5000)})}",
        "--quiet", "--out", str(d / "o")], "pixels"),
    ("imagefolder-not-an-image", lambda d, m: [
        "run", f"imagefolder:{_image_folder(d / 'img', extra={'c1/x.png': b'not a png'})}", "--quiet",
        "--out", str(d / "o")], "cannot read image"),
    ("imagefolder-one-class", lambda d, m: ["run", f"imagefolder:{_image_folder(d / 'img', classes=1)}", "--quiet",
                                            "--out", str(d / "o")], "class"),
    ("imagefolder-names-collide", lambda d, m: [
        "run", f"imagefolder:{_image_folder(d / 'a b')},{_image_folder(d / 'a_b')}", "--quiet", "--epochs", "1",
        "--out", str(d / "o")], "same artifact file"),
    ("out-is-a-file", lambda d, m: [*RUN, "--out", str(_write(d / "f", b"x"))], "is a file"),
    ("out-under-a-file", lambda d, m: [*RUN, "--out", str(_write(d / "f", b"x") / "sub")], "is a file"),
    ("out-unwritable", lambda d, m: [*RUN, "--out", "/proc/taskshare-test-out"], "not writable"),
    ("out-disk-full", lambda d, m: (_no_space(m), [*RUN, "--out", str(d / "o")])[1], "MiB free"),
    ("out-in-use", lambda d, m: _locked(d), "in use by another taskshare run"),
    ("disk-full-mid-run", lambda d, m: (_disk_full_mid_run(m), [*RUN, "--method", "ewc", "--out", str(d / "done")])[1],
     "No space left"),
    ("report-plots-file", lambda d, m: ["report", str(d / "done"), "--plots", str(_write(d / "f", b"x"))], "is a file"),
    ("report-missing", lambda d, m: ["report", str(d / "none")], "none"),
    ("report-corrupt-json", lambda d, m: (_write(d / "done" / "finetune" / "results.json", b"{oops"),
                                          ["report", str(d / "done")])[1], "JSON"),
    ("relatedness-out-file", lambda d, m: ["relatedness", "digits-tiny", "--out", str(_write(d / "f", b"x"))],
     "is a file"),
    ("inspect-classes-negative", lambda d, m: ["inspect", "mlp", "--patch", "head", "--classes", "-5"], "--classes"),
    ("inspect-classes-zero", lambda d, m: ["inspect", "mobilenetv2", "--classes", "0"], "--classes"),
    ("inspect-unknown-backbone", lambda d, m: ["inspect", "nosuch"], "nosuch"),
    ("checkpoint-no-identity", lambda d, m: (_edit_checkpoint(d, lambda s: s.pop("identity")), _resume(d))[1],
     "checkpoint"),
    ("checkpoint-task-negative", lambda d, m: (_edit_checkpoint(d, lambda s: s.update(task=-3)), _resume(d))[1],
     "checkpoint"),
    ("checkpoint-task-too-big", lambda d, m: (_edit_checkpoint(d, lambda s: s.update(task=99)), _resume(d))[1],
     "checkpoint"),
    ("checkpoint-rng-wrong", lambda d, m: (_edit_checkpoint(d, lambda s: s.update(rng=torch.zeros(3))), _resume(d))[1],
     "checkpoint"),
    ("checkpoint-shape-wrong", lambda d, m: (_edit_checkpoint(d, _first_tensor_wrong_shape), _resume(d))[1],
     "checkpoint"),
    ("checkpoint-is-a-folder", lambda d, m: (_replace_with_folder(d / "part" / "finetune" / "checkpoint.safetensors"),
                                             _resume(d))[1], "checkpoint"),
    ("checkpoint-garbage", lambda d, m: (_write(d / "part" / "finetune" / "checkpoint.safetensors", b"\x00" * 64),
                                         _resume(d))[1], "checkpoint"),
    ("checkpoint-other-settings", lambda d, m: _resume(d, "--set", "lr=0.5"), "other settings"),
    ("finished-other-settings", lambda d, m: [*RUN, "--out", str(d / "done"), "--resume", "--set", "lr=0.5"],
     "other settings"),
    ("finished-extra-config-key", lambda d, m: (_edit_results(d, lambda r: (r["config"].update(nosuch=1),
                                                                            r["identity"]["config"].update(nosuch=1))),
                                                [*RUN, "--out", str(d / "done"), "--resume"])[1], "other settings"),
    ("finished-no-identity-bad-config", lambda d, m: (_edit_results(d, lambda r: (r.pop("identity"),
                                                                                 r.update(config=[1]))),
                                                      [*RUN, "--out", str(d / "done"), "--resume"])[1], "results"),
    ("finished-not-results", lambda d, m: (_write(d / "done" / "finetune" / "results.json", b"[1, 2]"),
                                           [*RUN, "--out", str(d / "done"), "--resume"])[1], "results"),
    ("multitask-model-cnn", lambda d, m: ["run", "synthetic-imbalanced", "--method", "ew", "--set", "model=cnn",
                                          "--quiet", "--out", str(d / "o")], "needs image inputs"),
    ("multitask-method-unknown", lambda d, m: ["run", "synthetic-imbalanced", "--method", "ewc", "--quiet",
                                               "--out", str(d / "o")], "ewc"),
]
_lock: RunLock | None = None


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(case, made, tmp_path, monkeypatch, capsys):
    global _lock
    name, setup, words = case
    d = tmp_path
    shutil.copytree(made / "done", d / "done")
    shutil.copytree(made / "part", d / "part")
    monkeypatch.chdir(d)
    argv = setup(d, monkeypatch)
    before = _snapshot(d)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    finally:
        if _lock is not None:
            _lock.release()
            _lock = None
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("taskshare: error: "), (name, err)
    assert "Traceback" not in err
    assert words in lines[0], (name, lines[0])
    after = _snapshot(d)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, (name, changed)


@pytest.mark.parametrize("argv,words", [
    (["run", "digits-tiny", "--method", ",", "--quiet"], "names no method"),
    (["run", "digits-tiny", "--quiet", "--set", "momentum=-0.5"], "momentum"),
])
def test_the_installed_command_behaves_the_same(argv, words, tmp_path):
    """The entry point as a user runs it: a real process, exit status 2, one stderr line, no traceback."""
    p = subprocess.run([sys.executable, "-m", "taskshare.cli", *argv, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], p.stderr
