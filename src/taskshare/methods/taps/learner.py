"""The TAPS learners: sequential (`Taps`), joint (`TapsJoint`) and two-stage (`TapsTwoStage`)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.errors import ConfigError
from taskshare.methods.base import Learner, default_model, make_optimizer, task_seed
from taskshare.methods.blocks.gating import TAPS_LEAVES, active_layers, gated_layers, layer_sizes, penalty
from taskshare.methods.taps.config import TapsJointOptions, TapsOptions, TapsTwoStageOptions, warmup_for
from taskshare.methods.blocks.taskmodel import TaskModel
from taskshare.methods.taps.export import export_task, merged_model
from taskshare.models import PRETRAINED, TaskNet, build_backbone, head_logits, new_head, token_input

__all__ = ["Taps", "TapsJoint", "TapsTwoStage", "taps_backbone"]


def taps_backbone(cfg, input_shape: tuple[int, ...], seed: int, image_size: int = 32) -> nn.Module:
    """``cfg.model``: mlp/cnn/resnet18, or the model-patches backbones mobilenetv2 (ImageNet) and
    mobilenetv2-random (both at `image_size` px) and minilm; ``auto`` is minilm for pre-tokenized text (2, L),
    else mlp/resnet18."""
    name = "minilm" if cfg.model == "auto" and token_input(input_shape) else cfg.model
    return build_backbone(name if name in PRETRAINED else default_model(cfg, input_shape), input_shape, seed,
                          image_size=image_size)


class _TapsLearner(Learner):
    """Shared machinery: the wrapped TaskNet, task creation, optimizer groups, penalty, epoch counting."""

    Options = TapsOptions

    def __init__(self, cfg, options, input_shape, backbone_module: nn.Module | None = None):
        super().__init__(cfg, options if options is not None else self.Options(), input_shape)
        o = self.options
        if backbone_module is None:
            backbone = taps_backbone(cfg, input_shape, task_seed(cfg.seed, 0, salt=1), o.image_size)
        else:
            backbone = backbone_module
        if not isinstance(getattr(backbone, "out_dim", None), int):
            raise ConfigError(f"backbone {type(backbone).__name__} has no integer out_dim: set "
                              "backbone.out_dim to its feature size before passing it")
        self.backbone_mode = o.backbone  # auto: a pretrained base stays frozen, a random one learns task 1
        if o.backbone == "auto":
            pretrained = backbone_module is not None or cfg.model in ("mobilenetv2", "minilm") or (
                cfg.model == "auto" and token_input(input_shape))
            self.backbone_mode = "model" if pretrained else "first-task"
        self.net = TaskNet(backbone).to(self.device)
        # the same TaskModel as taskshare.wrap(model, method="taps"): one code path for the per-task tensors
        self.tm = TaskModel(self.net, "taps", layer_types=o.layer_types, tau=o.tau, score_init=o.score_init,
                            lambda_=o.lambda_, penalty_mode=o.penalty, head="head")
        self.tt = self.tm.tt
        self.layers = list(gated_layers(self.net))
        self._score_slots = [f"{n}.score" for n in self.layers]
        self._sizes = torch.tensor(list(layer_sizes(self.net).values()))
        self._taps_slots = {s for s in self.tt.slots if s.rsplit(".", 1)[-1] in TAPS_LEAVES}
        self._norm_slots = [s for s in self.tt.slots if s not in self._taps_slots and not s.startswith("head.")]
        self.current: str | None = None
        self.seen = 0          # training samples observed since begin_task / begin_all
        self.epoch_size = 1    # samples per epoch
        self._warned = False
        self.warmup = 0        # unpenalised epochs of a task (`_resolve_warmup`)

    # -- tasks and optimizer
    def _add_task(self, task, index: int, *, copy_from: str | None = None, as_base: bool = False) -> None:
        if task.name in self.tt:  # restored from a checkpoint
            return
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=2))
        init = new_head(self.net.backbone.out_dim, task.num_classes, gen)
        base = self.tt.base_tensors()
        if copy_from is not None:  # norms from `copy_from`, fresh deltas and scores
            init.update({s: torch.zeros_like(base[s]) for s in self._taps_slots if not s.endswith(".score")})
        score = 0.0 if as_base else self.options.score_init  # the task that trains the base uses no delta
        init.update({s: torch.full_like(base[s], score) for s in self._score_slots})
        trainable = [s for s in self.tt.slots if s not in self._taps_slots] if as_base else True
        self.tt.add_task(task.name, {k: v.to(self.device) for k, v in init.items()}, copy_from=copy_from,
                         trainable=trainable)

    def _split(self, task: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable deltas and scores, trainable norms and head) of `task`."""
        gated, other = [], []
        for name, t in self.tt.tensors(task).items():
            if self.tt.is_param(name) and t.requires_grad:
                (gated if name in self._taps_slots else other).append(t)
        return gated, other

    def _make_optimizer(self, decayed: list[nn.Parameter], undecayed: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Scores and deltas are never weight-decayed (spec pitfall 10)."""
        return make_optimizer([*decayed, *undecayed], self.cfg, no_decay=undecayed)

    # -- penalty and epochs
    @property
    def epoch(self) -> int:
        """The 0-based epoch of the next batch (samples observed // samples per epoch)."""
        return self.seen // self.epoch_size

    def begin_epoch(self, epoch: int) -> None:
        """Epoch `epoch` starts now (the driver says so: under data parallelism a rank sees only shards)."""
        self.seen = epoch * self.epoch_size

    def penalty(self, task: str) -> torch.Tensor:
        ts = self.tt.tensors(task)
        s = torch.stack([ts[n] for n in self._score_slots])
        return penalty(s, self._sizes, self.options.lambda_, self.options.penalty)

    def extra_results(self) -> dict[str, Any]:
        """results.json's ``taps``: the warm-up used and, per task, active layers of all and its final penalty."""
        with torch.no_grad():
            tasks = {t: {"layers": len(self.layers), "active": len(active_layers(self.tt, t)),
                         "penalty": float(self.penalty(t))} for t in self.tt.tasks}
        return {"taps": {"warmup_epochs": self.warmup, "lambda": self.options.lambda_, "tasks": tasks}}

    def _resolve_warmup(self, epochs: int) -> None:
        """`self.warmup` for a task of `epochs` TAPS epochs; warn once when the penalty would never start."""
        o = self.options
        self.warmup = warmup_for(o, epochs)
        if o.lambda_ > 0 and self.warmup >= epochs and not self._warned:
            self._warned = True
            warnings.warn(f"{self.name}: warmup_epochs={self.warmup} >= {epochs} TAPS epochs, so the sparsity "
                          f"penalty never switches on and every layer stays task-specific; train longer "
                          f"(--set epochs=...) or lower {o.SECTION}.warmup_epochs", stacklevel=3)

    # -- reporting
    def active_layers(self, task: str) -> list[str]:
        return active_layers(self.tt, task)

    def added_parameters(self, task: str) -> int:
        """Parameters `task` adds to the base: active deltas, scores, norm affine parameters, head."""
        ts = self.tt.tensors(task)
        active = set(self.active_layers(task))
        n = 0
        for name, t in ts.items():
            if not self.tt.is_param(name):
                continue
            layer, leaf = name.rsplit(".", 1)
            if leaf in ("delta", "delta_bias") and name in self._taps_slots and layer not in active:
                continue
            n += t.numel()
        return n

    def save_artifact(self, task: str, path: str | Path) -> int:
        """The task's artifact with only its active deltas (see `export_task`)."""
        return export_task(self.tt, task, path, meta={"method": self.name})

    def merged_model(self, task: str) -> nn.Module:
        return merged_model(self.tt, task)

    # -- inference and state
    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        self.net.eval()
        with self.tt.use(task), self.autocast():
            return self.net(x).float()

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen, "epoch_size": self.epoch_size, "current": self.current}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.seen, self.epoch_size, self.current = int(state["seen"]), int(state["epoch_size"]), state["current"]


class Taps(_TapsLearner):
    """Sequential TAPS: each task learns gated deltas against a frozen base; earlier tasks are untouched."""

    name = "taps"
    description = "TAPS: per-task layer deltas behind learned gates on a frozen base, sparsity penalty on the gates"
    Options = TapsOptions

    def __init__(self, cfg, options, input_shape, backbone_module: nn.Module | None = None):
        super().__init__(cfg, options, input_shape, backbone_module)
        self.first: str | None = None  # the task that trained the base (backbone="first-task")
        self._epoch_at = -1            # the epoch of the last observed batch
        self._batch = 0                # batches observed in that epoch (the official batch index i)

    def begin_task(self, task, index: int) -> None:
        trains_base = self.backbone_mode == "first-task" and index == 0
        if trains_base:
            self.first = task.name
        self._add_task(task, index, copy_from=None if trains_base else self.first, as_base=trains_base)
        for p in self.tt.shared_parameters():
            p.requires_grad_(trains_base)
        self.current = task.name
        self.tt.activate(task.name)
        self.seen, self.epoch_size = 0, max(1, len(task.train))
        self._epoch_at, self._batch = -1, 0
        gated, other = self._split(task.name)
        shared = self.tt.shared_parameters(trainable_only=True)
        self.optimizer = self._make_optimizer(shared + other, gated)
        self._trains_base = trains_base
        if not trains_base:
            self._resolve_warmup(self.cfg.epochs)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o = self.options
        epoch = self.epoch
        if epoch != self._epoch_at:  # first batch of an epoch
            self._epoch_at, self._batch = epoch, 0
            if o.lr_schedule == "cosine":
                self._set_lr(epoch)
        self.net.train()
        with self.autocast():
            loss = F.cross_entropy(self.net(x).float(), y)
        if not self._trains_base and o.lambda_ > 0 and epoch >= self.warmup:
            loss = loss + self.penalty(self.current)
        if o.accumulate == 1:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:  # official: every batch adds its gradients (penalty included); step after batch i if i % k == 0
            loss.backward()
            if self._batch % o.accumulate == 0:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self._batch += 1
        self.seen += len(y)
        return loss.detach()

    def _set_lr(self, epoch: int) -> None:
        """Official cosine: lr·(1 + cos(π·e/T))/2 in epoch e, T = epochs − 1 (the last epoch at lr 0)."""
        last = self.cfg.epochs - 1
        lr = self.cfg.lr * (1 + math.cos(math.pi * min(epoch, last) / last)) / 2 if last > 0 else self.cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _grad_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors the optimizer may hold gradients for: the current task's and the shared parameters."""
        out = dict(self.tt.tensors(self.current)) if self.current in self.tt else {}
        return {**out, **self.tt.shared_named_tensors()}

    @torch.no_grad()
    def end_task(self, task) -> None:
        """With ``bn_samples``: replace the task's BN running averages (which lag behind deltas that were still
        changing, badly so on short runs from a pretrained base) by the equal-weight average over the first
        ``bn_samples`` training samples, as model patches do (`Patches.recompute_bn`)."""
        if self.optimizer is not None:  # a gradient left over by accumulation is dropped, as the official
            self.optimizer.zero_grad(set_to_none=True)  # script ends without a step for it
        bns = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats]
        if not self.options.bn_samples or not bns:
            return
        momenta = [m.momentum for m in bns]
        with self.tt.use(task.name):
            try:
                for m in bns:
                    m.reset_running_stats()  # in place: this task's tensors
                    m.momentum = None
                self.net.train()
                with self.autocast():
                    for x, _ in task.train.head(self.options.bn_samples).batches(self.cfg.batch_size):
                        if len(x) > 1:
                            self.net(x.to(self.device))
            finally:
                for m, momentum in zip(bns, momenta):
                    m.momentum = momentum

    def extra_state(self) -> dict[str, Any]:
        state = {**super().extra_state(), "first": self.first, "epoch_at": self._epoch_at, "batch": self._batch}
        if self.options.accumulate > 1:  # the summed gradient not yet stepped on (at an epoch end: the leftover)
            state["grads"] = {n: t.grad.detach().clone() for n, t in self._grad_tensors().items()
                              if t.grad is not None}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.first = state["first"]
        self._epoch_at, self._batch = int(state.get("epoch_at", -1)), int(state.get("batch", 0))
        if "grads" in state:
            tensors = self._grad_tensors()
            for t in tensors.values():
                t.grad = None
            for n, g in state["grads"].items():
                t = tensors[n]
                t.grad = g.to(device=t.device, dtype=t.dtype).clone()


class TapsJoint(_TapsLearner):
    """Joint TAPS: a shared base trained with all tasks, plus per-task gated deltas (offline)."""

    name = "taps-joint"
    description = "joint TAPS: shared base trained on all tasks together with per-task gated deltas (offline)"
    not_data_parallel = "its loss is a sum of per-task means over each batch, which shards cannot reproduce"
    Options = TapsJointOptions
    offline = True

    def _add_all(self, tasks) -> None:
        for index, task in enumerate(tasks):
            self._add_task(task, index)
        self.names = [t.name for t in tasks]
        self.seen, self.epoch_size = 0, max(1, sum(len(t.train) for t in tasks))

    def begin_all(self, tasks) -> None:
        self._add_all(tasks)
        for p in self.tt.shared_parameters():
            p.requires_grad_(True)
        decayed, undecayed = self.tt.shared_parameters(trainable_only=True), []
        for name in self.names:
            gated, other = self._split(name)
            undecayed += gated
            decayed += other
        self.optimizer = self._make_optimizer(decayed, undecayed)
        self._resolve_warmup(self.cfg.epochs)

    def begin_task(self, task, index: int) -> None:  # single-task use (the runner calls begin_all)
        self.begin_all([task])

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.observe_mixed(x, y, torch.zeros_like(y))

    def _taps_loss(self, x, y, task_ids, penalise: bool) -> torch.Tensor:
        """Σ over the tasks present of (mean CE through the task's tensors + its penalty)."""
        loss = 0.0
        for i in torch.unique(task_ids).tolist():
            mask = task_ids == i
            name = self.names[i]
            self.tt.activate(name)
            with self.autocast():
                part = F.cross_entropy(self.net(x[mask]).float(), y[mask])
            loss = loss + (part + self.penalty(name) if penalise else part)
        return loss

    def _step(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seen += n
        return loss.detach()

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        self.net.train()
        penalise = self.options.lambda_ > 0 and self.epoch >= self.warmup
        return self._step(self._taps_loss(x, y, task_ids, penalise), len(y))

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "names": list(getattr(self, "names", []))}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.names = list(state["names"])


class TapsTwoStage(TapsJoint):
    """Official two-stage TAPS: multi-head joint pre-training of the base, then per-task TAPS (offline)."""

    name = "taps-two-stage"
    description = "two-stage TAPS: multi-head joint training of the base, then per-task TAPS from it (offline)"
    Options = TapsTwoStageOptions

    def begin_all(self, tasks) -> None:
        self._add_all(tasks)
        o = self.options
        self.joint_epochs = o.joint_epochs if o.joint_epochs is not None else max(1, self.cfg.epochs // 2)
        if self.cfg.epochs <= self.joint_epochs:
            raise ConfigError(f"taps-two-stage needs more epochs ({self.cfg.epochs}) than its joint stage "
                              f"({self.joint_epochs}): raise --set epochs or lower taps-two-stage.joint_epochs")
        self._enter(1)
        self._resolve_warmup(self.cfg.epochs - self.joint_epochs)

    def _enter(self, stage: int) -> None:
        self.stage = stage
        base = self.tt.base_tensors()
        base_norms = [base[s] for s in self._norm_slots if self.tt.is_param(s)]
        for p in self.tt.shared_parameters() + base_norms:
            p.requires_grad_(stage == 1)
        if stage == 1:  # shared weights and norms, one head per task
            heads = [t for name in self.names for s, t in self.tt.tensors(name).items() if s.startswith("head.")]
            self.optimizer = self._make_optimizer(self.tt.shared_parameters(trainable_only=True) + base_norms
                                                  + heads, [])
        else:
            decayed, undecayed = [], []
            for name in self.names:
                gated, other = self._split(name)
                undecayed += gated
                decayed += other
            self.optimizer = self._make_optimizer(decayed, undecayed)

    def _sync_norms(self, to_tasks: bool = True) -> None:
        """Stage 1 trains the base norms: keep every task's norm slots equal to them (and restorable)."""
        base = self.tt.base_tensors()
        with torch.no_grad():
            if to_tasks:
                for name in self.names:
                    ts = self.tt.tensors(name)
                    for s in self._norm_slots:
                        ts[s].copy_(base[s])
            else:  # after a checkpoint restore: the base norms are not part of tt.state()
                ts = self.tt.tensors(self.names[0])
                for s in self._norm_slots:
                    base[s].copy_(ts[s])

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        if self.stage == 1 and self.epoch >= self.joint_epochs:
            self._enter(2)
        self.net.train()
        if self.stage == 2:
            o = self.options
            penalise = o.lambda_ > 0 and self.epoch - self.joint_epochs >= self.warmup
            return self._step(self._taps_loss(x, y, task_ids, penalise), len(y))
        self.tt.activate(None)
        loss = 0.0
        for i in torch.unique(task_ids).tolist():
            mask = task_ids == i
            with self.autocast():
                logits = head_logits(self.net.features(x[mask]), self.tt.tensors(self.names[i])).float()
            loss = loss + F.cross_entropy(logits, y[mask])
        out = self._step(loss, len(y))
        self._sync_norms()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tt.load_state(state["tt"])
        self.load_extra_state(state["extra"])
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "stage": getattr(self, "stage", 1)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if self.names:
            self._enter(int(state["stage"]))  # the optimizer of the checkpoint's stage
            if self.stage == 1:
                self._sync_norms(to_tasks=False)
