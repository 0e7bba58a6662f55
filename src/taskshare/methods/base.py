"""The learner interface (as in Mammoth: begin_task / observe / end_task) and the shared-backbone helper.

A learner owns its network and a `TaskTensors` (the per-task-tensor core). The runner drives it:

    for task in stream:
        learner.begin_task(task, index)
        for epoch ...: for x, y in batches: learner.observe(x, y)
        learner.end_task(task)
        accuracy of every seen task j: learner.predict(x, task_j)

Offline learners (``offline = True``, e.g. joint training) get all tasks at once through
`begin_all(tasks)` and `observe_mixed(x, y, task_ids)` instead.

`state_dict()` / `load_state_dict()` hold everything that changes during training (tensors, optimizer
moments, method state) as nested dicts of tensors, written pickle-free by `core.serialize`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors, save_task
from taskshare.core.artifacts import content_sha256
from taskshare.config import RunConfig, TrainSettings
from taskshare.methods.blocks.taskfolder import write_run_manifest
from taskshare.models import HEAD_SLOTS, TaskNet, build_backbone, head_logits, new_head


@dataclasses.dataclass
class NoOptions:
    """This method has no options of its own."""


def task_seed(seed: int, index: int, salt: int = 0) -> int:
    """A seed for task `index` of a run: fixed by (seed, index), so a resumed run draws the same numbers."""
    return (seed * 1_000_003 + index * 7919 + salt * 104_729) % (2**63 - 1)


def train_mode(net: nn.Module, mode: bool = True) -> None:
    """net.train(mode), skipped when already set (it walks every submodule: measurable per step)."""
    if net.training != mode:
        net.train(mode)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainSettings,
                   no_decay: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The one optimizer builder of the learners: SGD (with the run's momentum) or Adam, at the run's lr and
    weight decay, over the parameters that require gradients; `no_decay` (also in `params`) get weight decay 0
    in a group of their own (TAPS's scores and deltas, spec pitfall 10)."""
    params = [p for p in params if p.requires_grad]
    skip = {id(p) for p in no_decay}
    groups = [g for g in ({"params": [p for p in params if id(p) not in skip], "weight_decay": cfg.weight_decay},
                          {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def default_model(cfg: TrainSettings, input_shape: tuple[int, ...]) -> str:
    if cfg.model != "auto":
        return cfg.model
    return "resnet18" if len(input_shape) == 3 and input_shape[0] == 3 else "mlp"


class Learner(ABC):
    """Base of every learner: the whole contract the drivers rely on, plus checkpoint plumbing.

    The driver calls, per task (online learners):
        begin_task(task, index); for each epoch e: begin_epoch(e), observe(x, y) per batch, end_epoch(e);
        end_task(task); predict(x, task) for every seen task
    and for offline learners (``offline = True``): begin_all(tasks), then epochs of observe_mixed(x, y, ids).
    It reads nothing else: `optimizers()` (the data-parallel gradient reducer is attached to them),
    `tensors()` (what data-parallel ranks broadcast and compare), `has_train_bn` (BatchNorm in train mode:
    a batch shard needs two samples), `state_dict()`, `save_artifact`, `shared_tensors()` /
    `base_fingerprint()` / `shared_parameter_count()` (the base), `added_parameters`, `extra_results`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    offline: ClassVar[bool] = False
    not_data_parallel: ClassVar[str] = ""  # why it cannot train exactly under torchrun (empty: it can)
    has_train_bn: bool = False             # BatchNorm layers train (statistics from the batch)

    def __init__(self, cfg: RunConfig | TrainSettings, options: Any, input_shape: tuple[int, ...]):
        self.cfg = TrainSettings.of(cfg)  # only how to train: no benchmark, output or other methods' options
        self.options = options
        self.input_shape = tuple(input_shape)
        self.device = torch.device(cfg.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.tt: TaskTensors  # set by subclasses

    @abstractmethod
    def begin_task(self, task, index: int) -> None: ...

    @abstractmethod
    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on a batch of the current task; returns the (detached) loss."""

    def end_task(self, task) -> None:  # noqa: B027 - optional hook
        pass

    def begin_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Epoch `epoch` (0-based) of the current task (or of all tasks, offline) starts."""

    def end_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Epoch `epoch` ended (every batch observed)."""

    def begin_all(self, tasks) -> None:
        """Offline learners: every task at once (``offline = True``)."""
        raise NotImplementedError(f"{self.name} is not an offline learner")

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Offline learners: one step on a batch mixing tasks (`task_ids` index the tasks of begin_all)."""
        raise NotImplementedError(f"{self.name} is not an offline learner")

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer the learner steps (built by `make_optimizer`)."""
        return [self.optimizer] if self.optimizer is not None else []

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """What every task shares (written as artifacts/base.safetensors); empty when nothing is shared."""
        return self.tt.shared_named_tensors()

    def base_fingerprint(self) -> str:
        """The fingerprint task artifacts are saved against (`TaskTensors.fingerprint`)."""
        return self.tt.fingerprint()

    def shared_parameter_count(self) -> int:
        return self.tt.count_shared()

    def tensors(self) -> list[torch.Tensor]:
        """The network's tensors (shared, base and every task's), in the same order in every process."""
        return self.tt.all_tensors()

    @abstractmethod
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Logits of `task` for `x` (task-incremental: the task identity is given)."""

    def prediction_key(self, task: str) -> str | None:
        """A digest of every tensor `predict(x, task)` reads (same digest, same outputs), so the driver can keep
        an earlier test accuracy; None: always evaluate. Default: the shared tensors and the task's set."""
        tt = getattr(self, "tt", None)
        if not isinstance(tt, TaskTensors):
            return None
        return tt.fingerprint() + content_sha256(tt.tensors(task))

    # -- accounting and artifacts (methods that store less than their whole task set override these)
    def added_parameters(self, task: str) -> int:
        """Parameters `task` adds to the shared base."""
        return self.tt.count(task)["params"]

    def save_artifact(self, task: str, path) -> int:
        """Write `task`'s artifact (safetensors + JSON) at `path`; returns the bytes written."""
        return save_task(self.tt, task, path, meta={"method": self.name})

    def write_manifest(self, folder, tasks: list, preprocessing: dict[str, Any]) -> bool:
        """After the task artifacts: `folder`/manifest.json, what `taskshare.load`, `predict` and `export` read
        (`blocks.taskfolder.write_run_manifest`); returns whether one was written (PAR writes its own)."""
        return write_run_manifest(folder, self, tasks, preprocessing)

    def extra_results(self) -> dict[str, Any]:
        """Method-specific entries for results.json (e.g. PAR's per-task `decisions`)."""
        return {}

    # -- checkpoints
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"tt": self.tt.state(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tt.load_state(state["tt"])
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")


class SharedBackboneLearner(Learner):
    """A shared backbone and one head per task (slots `head.weight`, `head.bias`).

    Subclasses change the loss through `regularizer()` and add state in `end_task`; the plain version is
    fine-tuning.
    """

    def __init__(self, cfg: RunConfig | TrainSettings, options: Any, input_shape: tuple[int, ...]):
        super().__init__(cfg, options, input_shape)
        backbone = build_backbone(default_model(cfg, input_shape), input_shape, task_seed(cfg.seed, 0, salt=1))
        self.net = TaskNet(backbone).to(self.device)
        self.tt = TaskTensors(self.net, HEAD_SLOTS)
        self.current: str | None = None

    def add_head(self, name: str, num_classes: int, index: int) -> None:
        if name in self.tt:  # already restored from a checkpoint
            return
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=2))
        head = new_head(self.net.backbone.out_dim, num_classes, gen)
        self.tt.add_task(name, {k: v.to(self.device) for k, v in head.items()})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.tt.shared_parameters(trainable_only=True) + self.tt.parameters(self.current)

    def begin_task(self, task, index: int) -> None:
        self.add_head(task.name, task.num_classes, index)
        self.current = task.name
        self.tt.activate(task.name)
        self.optimizer = make_optimizer(self.trainable_parameters(), self.cfg)

    def regularizer(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor | None:
        return None

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        train_mode(self.net)
        with self.autocast():
            features = self.net.features(x)
            loss = F.cross_entropy(self.net.head(features).float(), y)
            reg = self.regularizer(x, features)
            if reg is not None:
                loss = loss + reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        train_mode(self.net, False)
        with self.autocast():
            return head_logits(self.net.features(x), self.tt.tensors(task)).float()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.current = state["tt"]["active"]
