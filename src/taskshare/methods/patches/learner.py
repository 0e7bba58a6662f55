"""The model-patches learners: `Patches` (transfer: frozen base), `PatchesMultiTask` and the named kinds."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from taskshare import progress
from taskshare.errors import ConfigError
from taskshare.methods.base import Learner, make_optimizer, task_seed
from taskshare.methods.blocks.patching import parse_kinds, save_patch
from taskshare.methods.blocks.taskmodel import TaskModel
from taskshare.methods.patches.config import PatchesOptions, PatchOptions
from taskshare.methods.blocks.mixed import mixed_forward
from taskshare.models import TaskNet, build_backbone, new_head, token_input

__all__ = ["NAMED_PATCHES", "Patches", "PatchesMultiTask", "patch_backbone", "patch_methods"]


def patch_backbone(backbone: str, model: str, input_shape: tuple[int, ...]) -> str:
    """The backbone name patches use: ``backbone``, or for ``auto`` the run's `model` if set, else the ImageNet
    MobileNetV2 for images, MiniLM for pre-tokenized text and the MLP otherwise."""
    if backbone != "auto":
        return backbone
    return model if model != "auto" else "mobilenetv2" if len(input_shape) == 3 else \
        "minilm" if token_input(input_shape) else "mlp"


class Patches(Learner):
    """Model patches, transfer mode: a frozen base and a patch per task (see module docstring)."""

    name = "patches"
    description = "model patches (K for the Price of 1): frozen base, per-task scale-bias/depthwise/head patch"
    Options = PatchesOptions
    default_kinds = "scale-bias+head"

    def __init__(self, cfg, options, input_shape):
        options = options if options is not None else self.Options()
        super().__init__(cfg, options, input_shape)
        self.multi_task = options.mode == "multi-task"
        if self.multi_task != self.offline:
            right = "patches-multitask" if self.multi_task else "patches"
            raise ConfigError(f"--method {self.name} trains in {'multi-task' if self.offline else 'transfer'} "
                              f"mode: for mode={options.mode} use --method {right}")
        self.kinds = parse_kinds(getattr(options, "kinds", None) or self.default_kinds)
        if "head" not in self.kinds and "full" not in self.kinds:
            raise ConfigError(f"patch {'+'.join(self.kinds)} has no head: every task needs its own classifier; "
                              "add +head to the kinds")
        backbone = build_backbone(patch_backbone(options.backbone, cfg.model, input_shape), input_shape,
                                  task_seed(cfg.seed, 0, salt=1), width=options.width, image_size=options.image_size,
                                  weights=options.weights, sha256=options.sha256)
        # the same TaskModel as taskshare.wrap(model, method="patches"): per-task BN statistics for every kind
        # but a head alone (the paper's patches re-estimate them; shared ones would mix tasks)
        self.tm = TaskModel(TaskNet(backbone).to(self.device), "patches", kinds="+".join(self.kinds), head="head")
        self.net, self.tt = self.tm.model, self.tm.tt
        if self.multi_task:  # the base trains with the patches
            for p in self.tt.shared_parameters():
                p.requires_grad_(True)
        slot_set = set(self.tt.slots)
        bns = [(p, m) for p, m in self.net.named_modules() if isinstance(m, _BatchNorm)]
        self.frozen_bn = [m for p, m in bns if f"{p}.running_mean" not in slot_set and m.track_running_stats]
        self.task_bn = [m for p, m in bns if f"{p}.running_mean" in slot_set]
        self.has_train_bn = len(bns) > len(self.frozen_bn)
        self.current: str | None = None

    # -- tasks
    def add_task(self, name: str, num_classes: int, index: int) -> None:
        if name in self.tt:  # restored from a checkpoint
            return
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=2))
        head = new_head(self.net.backbone.out_dim, num_classes, gen)
        self.tt.add_task(name, {k: v.to(self.device) for k, v in head.items()})

    def begin_task(self, task, index: int) -> None:
        self.add_task(task.name, task.num_classes, index)
        self.current = task.name
        self.tt.activate(task.name)
        self.optimizer = make_optimizer(self.tt.shared_parameters(trainable_only=True)
                                        + self.tt.parameters(task.name), self.cfg)

    def train_mode(self) -> None:
        """Train mode, except BatchNorms whose statistics are shared and frozen (transfer mode)."""
        self.net.train()
        for m in self.frozen_bn:
            m.eval()

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)  # None grads: absent tasks are not touched at all
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.has_train_bn and len(y) < 2:  # no BN batch statistics for one sample
            return torch.zeros((), device=self.device)
        self.train_mode()
        with self.autocast():
            loss = F.cross_entropy(self.net(x).float(), y)
        return self._step(loss)

    def end_task(self, task) -> None:
        if self.options.bn_samples and self.task_bn:
            self.recompute_bn(task.name, task.train.head(min(self.options.bn_samples, len(task.train))))

    @torch.no_grad()
    def recompute_bn(self, task: str, dataset) -> None:
        """Re-estimate `task`'s BN statistics with its final patch: the equal-weight average over `dataset`'s
        batches (BN momentum None) replaces the running averages, which lag behind a patch that was still
        changing (and start from the base's statistics)."""
        momenta = [m.momentum for m in self.task_bn]
        with self.tt.use(task):
            try:
                for m in self.task_bn:
                    m.reset_running_stats()  # in place: this task's tensors
                    m.momentum = None
                self.train_mode()
                n_batches = -(-len(dataset) // self.cfg.batch_size)
                with self.autocast(), progress.bar(n_batches, f"{task}: BN statistics") as bar:
                    for x, _ in dataset.batches(self.cfg.batch_size, shuffle=False):
                        if len(x) > 1:
                            self.net(x.to(self.device))
                        bar.update(1)
            finally:
                for m, momentum in zip(self.task_bn, momenta):
                    m.momentum = momentum

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        self.net.eval()
        with self.tt.use(task), self.autocast():
            return self.net(x).float()

    @torch.inference_mode()
    def predict_mixed(self, x: torch.Tensor, task_ids: torch.Tensor,
                      tasks: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of a mixed-task batch in one forward (`mixed_forward`); padded classes are -inf."""
        self.net.eval()
        with self.autocast():
            return mixed_forward(self.net, self.tt, x, task_ids, tasks).float()

    def export(self, task: str, path: str | Path, fold_bn: bool = False) -> int:
        """Save `task`'s patch artifact (``fold_bn``: statistics folded into scale/bias, for deployment)."""
        return save_patch(self.tt, task, path, fold_bn=fold_bn,
                          meta={"method": self.name, "kinds": "+".join(self.kinds)})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.current = state["tt"]["active"]


class PatchesMultiTask(Patches):
    """Model patches, multi-task mode: shared base + all patches trained at once on single-task sub-batches."""

    name = "patches-multitask"
    description = "model patches, multi-task: shared base and per-task patches trained together"
    offline = True
    not_data_parallel = "its loss is a sum of per-task means over each batch, which shards cannot reproduce"

    @dataclasses.dataclass
    class Options(PatchesOptions):
        mode: str = "multi-task"

    def begin_all(self, tasks) -> None:
        for index, task in enumerate(tasks):
            self.add_task(task.name, task.num_classes, index)
        self.names = [t.name for t in tasks]
        params = self.tt.shared_parameters(trainable_only=True)
        for name in self.names:
            params += self.tt.parameters(name)
        self.optimizer = make_optimizer(params, self.cfg)

    def begin_task(self, task, index: int) -> None:  # single-task use (not called by the runner)
        self.begin_all([task])

    def observe(self, x, y):
        return self.observe_mixed(x, y, torch.zeros_like(y))

    def observe_mixed(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Split by task, one forward per task with its patch active; loss = sum of per-task mean CE."""
        self.train_mode()
        loss = None
        with self.autocast():
            for i in torch.unique(task_ids).tolist():
                mask = task_ids == i
                if self.has_train_bn and int(mask.sum()) < 2:
                    continue
                self.tt.activate(self.names[i])
                part = F.cross_entropy(self.net(x[mask]).float(), y[mask])
                loss = part if loss is None else loss + part
        self.tt.activate(None)
        if loss is None:
            return torch.zeros((), device=self.device)
        return self._step(loss)

    def extra_state(self):
        return {"names": getattr(self, "names", [])}

    def load_extra_state(self, state):
        self.names = list(state["names"])


# Methods named by their patch kinds (``--method scale-bias+head`` ...), for the transfer benchmarks.
NAMED_PATCHES = ("head", "scale-bias+head", "depthwise+head", "scale-bias+depthwise+head", "bias+head", "full")


def patch_methods() -> dict[str, type[Learner]]:
    """One transfer-mode learner class per patch combination in NAMED_PATCHES (kinds fixed by the name)."""
    out: dict[str, type[Learner]] = {}
    for kinds in NAMED_PATCHES:
        desc = ("full fine-tuning of a copy of the pretrained base per task (the patches baseline)"
                if kinds == "full" else f"model patch {kinds} on a frozen pretrained base")
        out[kinds] = type(f"Patch_{kinds.replace('+', '_').replace('-', '')}", (Patches,),
                          {"name": kinds, "description": desc, "Options": PatchOptions, "default_kinds": kinds,
                           "__doc__": f"Transfer-mode model patch {kinds}."})
    return out
