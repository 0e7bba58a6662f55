"""The per-task-tensor core: slots, activation, isolation, accounting, artifacts, serialisation."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from taskshare.core import TaskTensors, load_task, save_task
from taskshare.core.artifacts import artifact_paths
from taskshare.core.serialize import flatten_state, load_state, save_state, unflatten_state
from taskshare.errors import ArtifactError, TaskshareError


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


SLOTS = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "3.weight", "3.bias"]


def test_activate_binds_task_tensors_and_none_restores_base():
    net = small_net()
    tt = TaskTensors(net, SLOTS)
    x = torch.randn(8, 4)
    net.eval()
    base_out = net(x)
    a = tt.add_task("a", {"3.weight": torch.randn(2, 5), "3.bias": torch.zeros(2)})
    tt.activate("a")
    assert net[3].weight is a["3.weight"] and net[1].running_mean is a["1.running_mean"]
    assert net(x).shape == (8, 2)  # the task's head has its own number of classes
    tt.activate(None)
    assert torch.equal(net(x), base_out)  # disabled = base model, bit for bit


def test_training_one_task_leaves_other_tasks_and_base_untouched():
    net = small_net()
    tt = TaskTensors(net, SLOTS)
    tt.add_task("a")
    tt.add_task("b")
    before_a = {k: v.clone() for k, v in tt.tensors("a").items()}
    base = {k: v.clone() for k, v in tt.base_tensors().items()}
    tt.activate("b")
    opt = torch.optim.SGD(tt.parameters("b"), lr=0.5)
    net.train()
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    for k, v in tt.tensors("a").items():
        assert torch.equal(v, before_a[k]), k
    for k, v in tt.base_tensors().items():
        assert torch.equal(v, base[k]), k
    assert not torch.equal(tt.tensors("b")["1.running_mean"], before_a["1.running_mean"])  # BN stats are per task


def test_count_and_shared_parameters():
    net = small_net()
    tt = TaskTensors(net, SLOTS)
    tt.add_task("a", {"3.weight": torch.randn(7, 5), "3.bias": torch.zeros(7)})
    assert tt.count("a") == {"params": 5 + 5 + 7 * 5 + 7, "buffers": 10}
    assert tt.count_shared() == 4 * 5 + 5
    assert {id(p) for p in tt.shared_parameters()} == {id(net[0].weight), id(net[0].bias)}


def test_use_restores_previous_task_and_errors_name_the_fix():
    tt = TaskTensors(small_net(), SLOTS)
    tt.add_task("a")
    tt.add_task("b")
    tt.activate("a")
    with tt.use("b"):
        assert tt.active == "b"
    assert tt.active == "a"
    with pytest.raises(TaskshareError, match="unknown task 'zz': known tasks are a, b"):
        tt.activate("zz")
    with pytest.raises(TaskshareError, match="already exists"):
        tt.add_task("a")
    with pytest.raises(TaskshareError, match="has no parameter or buffer 'nope'"):
        TaskTensors(small_net(), ["1.nope"])
    with pytest.raises(TaskshareError, match="after tasks were added"):
        tt.add_slot("0.weight")


def test_artifact_round_trip_reproduces_outputs(tmp_path):
    net = small_net()
    tt = TaskTensors(net, SLOTS)
    tt.add_task("a", {"3.weight": torch.randn(2, 5), "3.bias": torch.randn(2)})
    with torch.no_grad():
        tt.tensors("a")["1.running_mean"].add_(0.3)
    x = torch.randn(5, 4)
    net.eval()
    with tt.use("a"):
        expected = net(x)
    size = save_task(tt, "a", tmp_path / "a", meta={"method": "test"})
    st, js = artifact_paths(tmp_path / "a")
    assert size == st.stat().st_size + js.stat().st_size
    side = json.loads(js.read_text())
    assert side["tensors"]["3.weight"]["shape"] == [2, 5] and side["base_fingerprint"] == tt.fingerprint()
    # a fresh model with the same base weights: load the task alone
    net2 = small_net()
    tt2 = TaskTensors(net2, SLOTS)
    assert load_task(tt2, tmp_path / "a.safetensors") == "a"
    net2.eval()
    with tt2.use("a"):
        assert torch.equal(net2(x), expected)


def test_artifact_refuses_other_base_and_corruption(tmp_path):
    tt = TaskTensors(small_net(0), SLOTS)
    tt.add_task("a")
    save_task(tt, "a", tmp_path / "a")
    other = TaskTensors(small_net(1), SLOTS)
    with pytest.raises(ArtifactError, match="saved on a different base network"):
        load_task(other, tmp_path / "a")
    st, js = artifact_paths(tmp_path / "a")
    st.write_bytes(st.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="corrupted or not a safetensors file"):
        load_task(TaskTensors(small_net(0), SLOTS), tmp_path / "a")
    js.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_task(TaskTensors(small_net(0), SLOTS), tmp_path / "a")


def test_artifact_from_another_save_is_detected(tmp_path):
    tt = TaskTensors(small_net(0), SLOTS)
    tt.add_task("a")
    save_task(tt, "a", tmp_path / "a")
    with torch.no_grad():
        tt.model[0].weight.add_(1)  # the base changes: a new save gets another fingerprint
    save_task(tt, "a", tmp_path / "b")
    st_a, _ = artifact_paths(tmp_path / "a")
    st_b, _ = artifact_paths(tmp_path / "b")
    st_a.write_bytes(st_b.read_bytes())
    with pytest.raises(ArtifactError, match="belong to different saves"):
        load_task(TaskTensors(small_net(0), SLOTS), tmp_path / "a")


def test_omitted_slots_load_as_base(tmp_path):
    tt = TaskTensors(small_net(), SLOTS)
    tt.add_task("a")
    with torch.no_grad():
        tt.tensors("a")["3.bias"].fill_(5)
    save_task(tt, "a", tmp_path / "a", omit=["3.weight"])
    tt2 = TaskTensors(small_net(), SLOTS)
    load_task(tt2, tmp_path / "a")
    assert torch.equal(tt2.tensors("a")["3.weight"], tt2.base_tensors()["3.weight"])
    assert torch.equal(tt2.tensors("a")["3.bias"], torch.full((3,), 5.0))


def test_state_round_trip_keeps_optimizer_tensors_in_place():
    net = small_net()
    tt = TaskTensors(net, SLOTS)
    tt.add_task("a")
    tt.add_task("b")
    tt.activate("b")
    state = {k: v for k, v in tt.state().items()}
    state = unflatten_state(*flatten_state(state))  # through the pickle-free format
    keep = tt.tensors("a")["3.weight"]
    with torch.no_grad():
        keep.add_(1)
    tt.load_state(state)
    assert tt.tensors("a")["3.weight"] is keep and torch.equal(keep, state["tasks"]["a"]["3.weight"])
    assert tt.active == "b" and tt.tasks == ["a", "b"]


def test_save_state_round_trip_with_optimizer_state(tmp_path):
    p = nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "rows": [[0.5, None], [0.25, 1.0]], "t": (1, "x")}
    save_state(tmp_path / "s.safetensors", state)
    back, _ = load_state(tmp_path / "s.safetensors")
    assert back["rows"] == state["rows"] and back["t"] == (1, "x")
    opt2 = torch.optim.Adam([nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(back["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state(path, {"a": torch.ones(2)})
    good = path.read_bytes()
    with pytest.raises(TypeError, match="cannot serialise object"):
        save_state(path, {"a": object()})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary left behind


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from taskshare.core.serialize import atomic_write_bytes
    old = os.umask(0o022)
    os.umask(old)
    atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~old  # not mkstemp's 0600
