"""Artifacts that cannot be mixed up, checkpoints checked field by field, one run per folder, no orphans.

Every damaged or mismatched artifact is a one-line ArtifactError naming what is wrong; nothing loads silently.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from taskshare.core import TaskTensors, load_task, save_task
from taskshare.core.artifacts import artifact_paths, content_sha256, read_artifact
from taskshare.core.checkpoint import check_lifelong, check_multi_output, restoring
from taskshare.core.serialize import atomic_write_bytes, load_tensors, save_tensors, tensors_to_bytes
from taskshare.engine.outdir import RunLock, remove_orphans
from taskshare.errors import ArtifactError, ConfigError

SLOTS = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "3.weight", "3.bias"]


def _tt() -> TaskTensors:
    torch.manual_seed(0)
    tt = TaskTensors(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)), SLOTS)
    tt.add_task("a", {"3.weight": torch.randn(2, 5), "3.bias": torch.zeros(2)})
    tt.add_task("b", {"3.weight": torch.randn(4, 5), "3.bias": torch.ones(4)})
    return tt


@pytest.fixture
def saved(tmp_path) -> tuple[TaskTensors, Path]:
    tt = _tt()
    save_task(tt, "a", tmp_path / "a", meta={"method": "test"})
    save_task(tt, "b", tmp_path / "b", meta={"method": "test"})
    return tt, tmp_path


def _sidecar(d: Path, edit) -> None:
    path = d / "a.json"
    side = json.loads(path.read_text())
    edit(side)
    path.write_text(json.dumps(side))


def _retype(d: Path, name: str, dtype: torch.dtype) -> None:
    """Rewrite a.safetensors with tensor `name` in another dtype, header kept (as a careless edit would)."""
    tensors, meta = load_tensors(d / "a.safetensors")
    tensors[name] = tensors[name].to(dtype)
    save_tensors(d / "a.safetensors", tensors, meta)


def _tamper(d: Path) -> None:
    """Flip one byte of the tensor data (the last byte of the file)."""
    data = bytearray((d / "a.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "a.safetensors").write_bytes(bytes(data))


CASES = [  # (id, damage(d), words in the message)
    ("tensors-of-another-task", lambda d: shutil.copy(d / "b.safetensors", d / "a.safetensors"), "different saves"),
    ("sidecar-of-another-task", lambda d: shutil.copy(d / "b.json", d / "a.json"), "different saves"),
    ("no-base-fingerprint", lambda d: _sidecar(d, lambda s: s.pop("base_fingerprint")), "base_fingerprint"),
    ("tensors-as-a-list", lambda d: _sidecar(d, lambda s: s.update(tensors=[1, 2])), "tensors"),
    ("entry-without-shape", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].pop("shape")), "shape"),
    ("entry-not-an-object", lambda d: _sidecar(d, lambda s: s["tensors"].update({"3.bias": 3})), "3.bias"),
    ("shape-edited", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].update(shape=[7])), "3.bias"),
    ("negative-shape", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].update(shape=[-2])), "shape"),
    ("dtype-edited", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].update(dtype="float64")), "float64"),
    ("tensor-retyped", lambda d: _retype(d, "3.weight", torch.float64), "float64"),
    ("extra-tensor-in-sidecar", lambda d: _sidecar(d, lambda s: s["tensors"].update(
        {"9.x": {"shape": [1], "dtype": "float32", "kind": "param", "trainable": True}})), "9.x"),
    ("bytes-tampered", _tamper, "checksum"),
    ("checksum-edited", lambda d: _sidecar(d, lambda s: s.update(sha256="0" * 64)), "sha256"),
    ("task-renamed-in-sidecar", lambda d: _sidecar(d, lambda s: s.update(task="z")), "task"),
    ("old-format", lambda d: _sidecar(d, lambda s: s.update(format="taskshare-task/1")), "taskshare-task/1"),
    ("sidecar-not-utf8", lambda d: (d / "a.json").write_bytes(b"\xff\xfe{}"), "JSON"),
    ("sidecar-not-json", lambda d: (d / "a.json").write_text("{oops"), "JSON"),
    ("sidecar-a-list", lambda d: (d / "a.json").write_text("[]"), "not a JSON object"),
    ("sidecar-is-a-folder", lambda d: ((d / "a.json").unlink(), (d / "a.json").mkdir()), "folder"),
    ("tensor-file-missing", lambda d: (d / "a.safetensors").unlink(), "not found"),
    ("tensor-file-garbage", lambda d: (d / "a.safetensors").write_bytes(b"\x08" + b"\x00" * 15), "corrupted"),
    ("tensor-file-is-a-folder", lambda d: ((d / "a.safetensors").unlink(), (d / "a.safetensors").mkdir()), "folder"),
    ("tensor-file-not-taskshare", lambda d: save_tensors(d / "a.safetensors", load_tensors(d / "a.safetensors")[0]),
     "format"),
    ("meta-edited", lambda d: _sidecar(d, lambda s: s["meta"].update(method="other")), "edited after the save"),
    ("trainable-flipped", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].update(trainable=False)),
     "edited after the save"),
    ("omitted-added", lambda d: _sidecar(d, lambda s: s["omitted"].append("1.bias")), "both saved and omitted"),
    ("kind-unknown", lambda d: _sidecar(d, lambda s: s["tensors"]["3.bias"].update(kind="weights")), "kind"),
    ("buffer-trainable", lambda d: _sidecar(d, lambda s: s["tensors"]["1.running_mean"].update(trainable=True)),
     "trainable"),
    ("meta-a-list", lambda d: _sidecar(d, lambda s: s.update(meta=[])), "meta"),
    ("method-a-number", lambda d: _sidecar(d, lambda s: s.update(method=3)), "method"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_artifact_is_one_line(case, saved):
    _, damage, words = case
    tt, d = saved
    damage(d)
    fresh = _tt()
    fresh.remove_task("a")
    with pytest.raises(ArtifactError) as err:
        load_task(fresh, d / "a")
    msg = str(err.value)
    assert "\n" not in msg and words in msg, msg
    assert "a" not in fresh  # nothing half-loaded


def test_intact_artifact_loads_and_checksums_cover_name_dtype_shape_bytes(saved):
    tt, d = saved
    side, tensors = read_artifact(d / "a")
    assert side["task"] == "a" and side["method"] == "test" and side["sha256"] == content_sha256(tensors)
    fresh = _tt()
    fresh.remove_task("a")
    assert load_task(fresh, d / "a") == "a"
    assert all(torch.equal(fresh.tensors("a")[k], tt.tensors("a")[k]) for k in tensors)
    t = {"x": torch.zeros(2)}
    assert len({content_sha256(t), content_sha256({"y": torch.zeros(2)}), content_sha256({"x": torch.zeros(2, 1)}),
                content_sha256({"x": torch.zeros(2, dtype=torch.float64)}), content_sha256({"x": torch.ones(2)})}) == 5


def test_a_reformatted_sidecar_still_loads(saved):
    """The sidecar's digest is over its canonical JSON: indentation and key order do not count."""
    _, d = saved
    side = json.loads((d / "a.json").read_text())
    (d / "a.json").write_text(json.dumps(dict(reversed(list(side.items())))))
    fresh = _tt()
    fresh.remove_task("a")
    assert load_task(fresh, d / "a") == "a"


def test_meta_that_is_not_json_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_task(_tt(), "a", tmp_path / "a", meta={"method": "test", "x": object()})
    assert list(tmp_path.iterdir()) == []


_BYTES_SCRIPT = """
import hashlib, sys, torch
from taskshare.core.serialize import tensors_to_bytes
t = {"w": torch.arange(12.).reshape(3, 4), "b": torch.ones(3, dtype=torch.int64), "h": torch.zeros(2, dtype=torch.bfloat16)}
meta = {k: k * 3 for k in ("task", "method", "format", "sha256", "base_fingerprint", "zeta", "alpha", "skeleton")}
sys.stdout.write(tensors_to_bytes(t, meta).hex())
"""


def test_safetensors_bytes_are_the_same_in_separate_processes():
    """safetensors writes __metadata__ in hash-map order (random per process); tensors_to_bytes does not."""
    import subprocess
    import sys

    from safetensors.torch import load
    outs = {subprocess.run([sys.executable, "-c", _BYTES_SCRIPT], capture_output=True, text=True, check=True,
                           timeout=120).stdout for _ in range(3)}
    assert len(outs) == 1
    data = bytes.fromhex(outs.pop())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert n % 8 == 0 and list(header) == sorted(header) and list(header["__metadata__"]) == sorted(
        header["__metadata__"])
    back = load(data)
    assert torch.equal(back["w"], torch.arange(12.).reshape(3, 4)) and back["h"].dtype == torch.bfloat16


def test_safetensors_bytes_do_not_depend_on_metadata_order():
    t = {"w": torch.arange(6.).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    a = tensors_to_bytes(t, {"z": "1", "a": "2", "m": "3"})
    b = tensors_to_bytes(t, {"m": "3", "a": "2", "z": "1"})
    assert a == b and int.from_bytes(a[:8], "little") % 8 == 0
    from safetensors.torch import load
    assert torch.equal(load(a)["w"], t["w"])


# ------------------------------------------------------------------------------------------ checkpoints
IDENT = {"benchmark": "x", "method": "finetune", "config": {}}


def _ckpt(**kw):
    base = {"identity": IDENT, "learner": {}, "rows": [[0.5, None, None]], "task": 1, "epoch": 0, "elapsed": 1.0,
            "rng": torch.get_rng_state()}
    base.update(kw)
    return base


@pytest.mark.parametrize("kw,words", [
    ({"task": -3}, "task=-3"), ({"task": 4}, "task=4"), ({"task": "1"}, "task='1'"),
    ({"epoch": 5}, "epoch=5"), ({"rows": []}, "rows"), ({"rows": [[2.0, None, None]]}, "rows"),
    ({"rng": torch.zeros(3)}, "RNG"), ({"rng": torch.zeros(10, dtype=torch.uint8)}, "RNG"), ({"elapsed": -1.0}, "elapsed"),
    ({"elapsed": float("nan")}, "elapsed"), ({"learner": [1]}, "learner"),
], ids=["task-negative", "task-too-big", "task-a-string", "epoch-too-big", "rows-missing", "accuracy-above-1",
        "rng-float", "rng-short", "elapsed-negative", "elapsed-nan", "learner-a-list"])
def test_lifelong_checkpoint_fields_are_checked(kw, words):
    with pytest.raises(ArtifactError) as err:
        check_lifelong(_ckpt(**kw), "ck", IDENT, n_tasks=3, epochs=2, offline=False)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_identity_missing_or_other():
    ck = _ckpt()
    ck.pop("identity")
    with pytest.raises(ArtifactError, match="'identity' is missing"):
        check_lifelong(ck, "ck", IDENT, n_tasks=3, epochs=2, offline=False)
    with pytest.raises(ConfigError, match="other settings"):
        check_lifelong(_ckpt(identity={**IDENT, "method": "ewc"}), "ck", IDENT, n_tasks=3, epochs=2, offline=False)
    with pytest.raises(ArtifactError, match="not a mapping"):
        check_lifelong([1], "ck", IDENT, n_tasks=3, epochs=2, offline=False)
    assert check_lifelong(_ckpt(), "ck", IDENT, n_tasks=3, epochs=2, offline=False)["task"] == 1
    offline = _ckpt(task=0, epoch=1, rows=[])
    assert check_lifelong(offline, "ck", IDENT, n_tasks=3, epochs=2, offline=True) is offline


def test_multi_output_checkpoint_fields_are_checked():
    ok = {"identity": IDENT, "epoch": 1, "model": {}, "stepper": {}, "best": {}, "history": [{}], "elapsed": 0.5,
          "rng": torch.get_rng_state(), "au": None}
    assert check_multi_output(ok, "ck", IDENT, epochs=2) is ok
    for bad in ({"epoch": 0}, {"epoch": 3}, {"history": []}, {"model": []}, {"au": [1]}):
        with pytest.raises(ArtifactError):
            check_multi_output({**ok, **bad}, "ck", IDENT, epochs=2)


def test_a_state_that_does_not_fit_is_one_line():
    net = nn.Linear(2, 2)
    with pytest.raises(ArtifactError) as err:
        with restoring("ck"):
            net.load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(2)})
    assert "does not fit" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kw,words", [
    ({"task": 1}, "task=1"), ({"epoch": 0}, "epoch=0"), ({"rows": [[0.5, None, None]]}, "rows"),
], ids=["offline-task-1", "offline-epoch-0", "offline-with-rows"])
def test_offline_checkpoint_is_only_mid_run(kw, words):
    """An offline learner (joint) checkpoints only at task 0 inside its single training phase, with no rows."""
    with pytest.raises(ArtifactError, match=words):
        check_lifelong(_ckpt(**{"task": 0, "epoch": 1, "rows": [], **kw}), "ck", IDENT, n_tasks=3, epochs=2,
                       offline=True)


def test_no_epoch_after_the_last_task():
    rows = [[0.5, None, None], [0.5, 0.5, None], [0.5, 0.5, 0.5]]
    assert check_lifelong(_ckpt(task=3, epoch=0, rows=rows), "ck", IDENT, n_tasks=3, epochs=2, offline=False)
    with pytest.raises(ArtifactError, match="after the last task"):
        check_lifelong(_ckpt(task=3, epoch=1, rows=rows), "ck", IDENT, n_tasks=3, epochs=2, offline=False)


@pytest.mark.parametrize("skeleton", ['{"__dict__": 5}', '{"__tensor__": [1]}', '{"__dict__": {"i:x": 1}}',
                                      '{"__tensor__": "nope"}', "[" * 5000 + "]" * 5000, "{oops"],
                         ids=["dict-not-a-mapping", "tensor-ref-a-list", "int-key-not-int", "tensor-ref-unknown",
                              "nested-too-deep", "not-json"])
def test_a_damaged_state_skeleton_is_one_line(skeleton, tmp_path):
    from taskshare.core.serialize import load_state
    save_tensors(tmp_path / "ck.safetensors", {"a": torch.ones(1)}, {"skeleton": skeleton})
    with pytest.raises(ArtifactError, match="skeleton") as err:
        load_state(tmp_path / "ck.safetensors")
    assert "\n" not in str(err.value)


def test_a_checkpoint_that_is_a_folder_or_unreadable_is_one_line(tmp_path, monkeypatch):
    import errno

    from taskshare.core.serialize import load_state, read_json
    (tmp_path / "ck.safetensors").mkdir()
    (tmp_path / "r.json").mkdir()
    with pytest.raises(ArtifactError, match="is a folder"):
        load_state(tmp_path / "ck.safetensors")
    with pytest.raises(ArtifactError, match="is a folder"):
        read_json(tmp_path / "r.json", "results")

    def denied(self):  # as for a file without read permission (chmod does not stop root)
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)
    for load in (load_state, read_json):
        with pytest.raises(ArtifactError, match="cannot be read .Permission denied.") as err:
            load(tmp_path / "x")
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ output folders, orphans
def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    import os
    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def test_orphaned_temporary_files_are_removed(tmp_path):
    (tmp_path / "m" / "artifacts").mkdir(parents=True)
    orphan = tmp_path / "m" / ".checkpoint.safetensors.abc12_xy.tmp"
    orphan.write_bytes(b"half")
    (tmp_path / "m" / "artifacts" / ".a.json.k9x0_q2w.tmp").write_bytes(b"half")
    keep = [tmp_path / "m" / "results.json", tmp_path / ".notes.tmp",  # not taskshare's pattern
            tmp_path / "m" / "deep" / "er" / ".x.abcdefgh.tmp"]       # not where taskshare writes
    for k in keep:
        k.parent.mkdir(parents=True, exist_ok=True)
        k.write_text("{}")
    assert len(remove_orphans(tmp_path)) == 2
    assert not orphan.exists() and all(k.exists() for k in keep)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")

    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_artifact_paths_accept_either_suffix(tmp_path):
    assert artifact_paths(tmp_path / "a.json") == artifact_paths(tmp_path / "a.safetensors") == \
        (tmp_path / "a.safetensors", tmp_path / "a.json")
