"""Reference runs: a fixed set of small runs covering every method, lifelong and multi-output.

Their accuracy matrices (or multi-output test metrics) and the sha256 of every artifact's tensors are stored
in tests/data/reference_runs.json; tests/test_reference_runs.py reruns them and compares. A refactoring
must leave them all identical; a deliberate change of numbers rewrites the file, in its own commit, with
the reason in the message:

    .venv/bin/python tests/reference_runs.py --write          # all runs (about a minute on 2 cores)

Exact hashes depend on the CPU's kernels, so they are compared only on the platform that recorded them
(`platform_key`); elsewhere the test compares the numbers with a tolerance.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from taskshare.engine.run import cpu_info

HERE = Path(__file__).parent
STORE = HERE / "data" / "reference_runs.json"
sys.path.insert(0, str(HERE))

PAR_TINY = {"extractor": "raw", "channels": 8, "cells": 2, "steps": 2, "search_epochs": 2}
LIFELONG = {  # run id -> (method, method options)
    "finetune": ("finetune", {}), "ewc": ("ewc", {}), "ewc-online": ("ewc", {"online": True}), "lwf": ("lwf", {}),
    "expert-per-task": ("expert-per-task", {}), "joint": ("joint", {}),
    "patches": ("patches", {"backbone": "cnn"}), "patches-multitask": ("patches-multitask", {"backbone": "cnn"}),
    "bias+head": ("bias+head", {"backbone": "cnn"}),
    "taps": ("taps", {"warmup_epochs": 1}), "taps-joint": ("taps-joint", {"warmup_epochs": 1}),
    "taps-two-stage": ("taps-two-stage", {"warmup_epochs": 0}),
    "par": ("par", PAR_TINY), "par-unit-patch": ("par", {**PAR_TINY, "unit": "patch"}),
}
MULTI_OUTPUT = ["stl", "ew", "uw", "dwa", "gradnorm", "pcgrad", "mgda", "cagrad", "adatask", "adatask+pcgrad"]


def platform_key() -> str:
    cpu = cpu_info()
    return f"{torch.__version__}/{cpu['capability']}/threads={torch.get_num_threads()}/{cpu['vendor']}"


def tensor_digest(path: Path) -> tuple[str, list[float]]:
    """sha256 over (name, dtype, shape, bytes) of every tensor in sorted order; and (sum, sum |x|) in float64."""
    tensors = load_file(str(path))
    h = hashlib.sha256()
    total, total_abs = 0.0, 0.0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if t.is_floating_point():
            total += float(t.double().sum())
            total_abs += float(t.double().abs().sum())
    return h.hexdigest(), [total, total_abs]


def _artifacts(run_dir: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((run_dir / "artifacts").glob("*.safetensors")):
        sha, sums = tensor_digest(p)
        out[p.name] = {"sha256": sha, "sums": sums}
    return out


def lifelong_run(run_id: str, out: Path) -> dict:
    from conftest import make_stream
    from taskshare.config import RunConfig
    from taskshare.engine.lifelong import run_method

    method, opts = LIFELONG[run_id]
    cfg = RunConfig(epochs=2, batch_size=16, lr=0.05, model="mlp", checkpoint_minutes=1e9, seed=0,
                    methods={method: dict(opts)} if opts else {})
    res = run_method(make_stream(3), method, cfg, out, benchmark="synthetic")
    return {"acc_matrix": res["acc_matrix"], "artifacts": _artifacts(out / method)}


def multi_output_run(method: str, out: Path) -> dict:
    from taskshare.config import RunConfig
    from taskshare.engine.multioutput import run_multitask

    cfg = RunConfig(epochs=2, batch_size=64, lr=0.01, model="auto", checkpoint_minutes=1e9, seed=0, limit=256)
    res = run_multitask("synthetic-imbalanced", method, cfg, out)
    return {"task_metrics": res["task_metrics"], "artifacts": _artifacts(out / method)}


def all_runs() -> list[str]:
    return [f"lifelong/{r}" for r in LIFELONG] + [f"multi-output/{m}" for m in MULTI_OUTPUT]


def run(ref: str) -> dict:
    kind, name = ref.split("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        return (lifelong_run if kind == "lifelong" else multi_output_run)(name, Path(tmp))


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    from taskshare import progress
    progress.set_quiet(True)
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/reference_runs.py --write   (rewrites tests/data/reference_runs.json)")
    store = {"platform": platform_key(), "runs": {ref: run(ref) for ref in all_runs()}}
    STORE.parent.mkdir(exist_ok=True)
    STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(store['runs'])} reference runs to {STORE} ({store['platform']})")


if __name__ == "__main__":
    main()
