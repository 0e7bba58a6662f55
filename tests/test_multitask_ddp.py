"""Data parallelism (gloo, 2 processes on this machine, file rendezvous: no network): the trained parameters
equal the single-process run on the same global batch, for every multi-task method, and the runner works
under it (rank 0 writes the results)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import spawn_workers

from taskshare.core.serialize import load_tensors, save_tensors
from taskshare.engine import distributed as ddp
from taskshare.config import RunConfig
from taskshare.methods.multioutput import METHODS, MultiOutputNet, MultiTaskTrainer

WORLD = 2
TASKS = ("a", "b", "c")
# (method, options): every method, plus MGDA-UB (its K x K Gram matrix is what gets reduced)
CASES = [(m, None) for m in METHODS] + [("mgda", {"ub": True})]
RUNNER_CFG = dict(epochs=2, batch_size=25, lr=0.01, optimizer="adam", seed=0, checkpoint_minutes=1e9,
                  benchmark={"n_train": 100, "n_test": 40, "dim": 6, "units": 4, "hidden": [12]})


def _mse(o, t):
    return ((o[:, 0] - t) ** 2).mean()


def _data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 4, dtype=torch.float64, generator=g)
    y = torch.tanh(x @ torch.randn(4, 3, dtype=torch.float64, generator=g))
    return x, {t: y[:, k] * 10.0 ** k for k, t in enumerate(TASKS)}


def _train(method, options, rank: int, world: int) -> dict[str, torch.Tensor]:
    """4 epochs of 2 global batches (25 = 13 + 12 samples: uneven shards) in float64."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
    net = MultiOutputNet(enc, {t: nn.Linear(6, 1) for t in TASKS}).double()
    reducer = ddp.GradReducer() if world > 1 else None
    tr = MultiTaskTrainer(net, {t: _mse for t in TASKS}, method, lr=0.01, options=options, reducer=reducer)
    x, ys = _data()
    for epoch in range(4):
        perm = torch.randperm(50, generator=torch.Generator().manual_seed(epoch))
        for s in range(0, 50, 25):
            glob = perm[s:s + 25]
            idx = torch.tensor_split(glob, world)[rank] if world > 1 else glob
            if reducer is not None:
                reducer.set_shard(len(idx), len(glob))
            tr.step(x[idx], {t: v[idx] for t, v in ys.items()})
        tr.end_epoch()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _lifelong_style(rank: int, world: int) -> dict[str, torch.Tensor]:
    """A learner that steps its own optimizer (as Learner.observe does): attach + shard_batch."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    reducer = ddp.GradReducer() if world > 1 else None
    ddp.attach(opt, reducer)
    x, ys = _data()
    y = torch.stack(list(ys.values()), 1).argmax(1)
    for s in range(0, 50, 9):                    # batches of 9 (5 + 4) and a last one of 5 (3 + 2)
        xb, yb = ddp.shard_batch(reducer, x[s:s + 9], y[s:s + 9])
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for i, (method, options) in enumerate(CASES):
            params = _train(method, options, rank, WORLD)
            if rank == 0:
                save_tensors(Path(out) / f"case{i}.safetensors", params)
        params = _lifelong_style(rank, WORLD)
        if rank == 0:
            save_tensors(Path(out) / "lifelong.safetensors", params)
        from taskshare.engine.multioutput import run_multitask

        run_multitask("synthetic-imbalanced", "pcgrad", RunConfig(**RUNNER_CFG), Path(out) / "runs")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_out():
    with tempfile.TemporaryDirectory() as out:
        spawn_workers(_worker, WORLD, out)
        yield Path(out)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[m + ("-ub" if o else "") for m, o in CASES])
def test_two_ranks_equal_one_process(ddp_out, i):
    method, options = CASES[i]
    ref = _train(method, options, 0, 1)
    got, _ = load_tensors(ddp_out / f"case{i}.safetensors")
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=f"{method}: {k}")
    # and training moved the parameters (the comparison is not trivially between two initial states)
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(4, 8)).double()[0].weight
    assert not torch.allclose(ref["encoder.0.weight"], init)


def test_optimizer_hook_for_learners_that_step_themselves(ddp_out):
    ref = _lifelong_style(0, 1)
    got, _ = load_tensors(ddp_out / "lifelong.safetensors")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)


def test_runner_under_two_ranks_matches_one_process(ddp_out, tmp_path):
    from taskshare.engine.multioutput import run_multitask

    two = json.loads((ddp_out / "runs" / "pcgrad" / "results.json").read_text())
    one = run_multitask("synthetic-imbalanced", "pcgrad", RunConfig(**RUNNER_CFG), tmp_path)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert (ddp_out / "runs" / "stl" / "results.json").is_file()
    assert two["best_epoch"] == one["best_epoch"]
    for t in one["tasks"]:
        assert two["task_metrics"][t]["mse"] == pytest.approx(one["task_metrics"][t]["mse"], rel=1e-4)


def test_shard_and_average_gradients_without_a_process_group():
    idx = torch.arange(7)
    assert torch.equal(ddp.shard(idx, ddp.DistInfo(1, 2)), torch.arange(4, 7))
    assert torch.equal(ddp.shard(idx), idx)
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ddp.average_gradients([p], 3, 7)             # one process: a no-op
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    with pytest.raises(Exception, match="cannot be split"):
        ddp.shard(torch.arange(1), ddp.DistInfo(0, 2))
