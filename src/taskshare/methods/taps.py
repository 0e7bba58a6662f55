"""TAPS: Task Adaptive Parameter Sharing (Wallingford et al., CVPR 2022, arXiv 2203.16708).

Every chosen layer i of a base network (Conv1d/2d/3d, Linear: convolutions, transformer attention
projections and MLPs) keeps its base weight W_i and gets, per task t, a dense delta ΔW_i^t (initialised to 0,
same shape as W_i) and one scalar score s_i^t (initialised to 0.15):

    W_i^t = W_i + I_τ(s_i^t) · ΔW_i^t,        I_τ(s) = 1[s >= τ],  τ = 0.1 (inclusive)     (paper, Approach)

    min over ΔW^t, s^t, norms^t, head^t:   L_t(W^t)  +  λ · R(s^t)                            (paper, Approach)

I_τ has no useful derivative, so the backward pass is straight-through (I_τ treated as the identity):
∂L/∂s_i = ⟨∂L/∂W_i^t, ΔW_i^t⟩ + λ ∂R/∂s_i, a first-order estimate of what switching the delta on changes.
An inactive layer (s_i < τ) gives ΔW_i exactly zero gradient, but s_i still gets ⟨∂L/∂W_i^t, ΔW_i⟩, so the
layer can switch back on. A layer with a bias gets a bias delta behind the same gate (the score's gradient
then also has the term ⟨∂L/∂b_i^t, Δb_i^t⟩); the official ResNets have bias-free convolutions, so this only
matters for Linear layers (transformers).

**Penalty R** (``penalty=``). The paper writes λ·Σ_i|s_i|; the official code (MattWallingford/TAPS@87e9188,
``train_sequential.py``) uses λ·Σ_i|s_i| / 52, the constant 52 hard-coded whatever the architecture.

- ``official`` (default): R = Σ_i |s_i| / 52, so λ values transfer from the official scripts. The paper's
  unnormalised λ_paper·Σ|s_i| is this mode with λ = 52·λ_paper.
- ``size-weighted``: R = Σ_i |W_i|·|s_i| / Σ_i |W_i| (|W_i|: elements of layer i's weight + bias), so a
  2.36M-weight layer costs more to switch on than a 4K-weight one (spec §4 pitfall 1).

**Large λ and the step size.** The penalty's gradient is a constant ±λ/52 (or ±λ|W_i|/Σ|W|), so plain SGD moves
a score by lr·λ/52 per step and, once near 0, hops around it with that amplitude (amplified up to 1/(1-μ) by
momentum μ). Layers switch off for good only while that amplitude stays below τ: e.g. lr 0.05, λ = 20,
no momentum gives 0.019 and every unsupported layer turns off; λ = 10⁴ makes the scores jump between 0.15 and
-9.5 and half of the steps are active. This is the paper's objective under SGD (the official code behaves the
same), not something the implementation adds; choose λ (or lr) with it in mind in a λ sweep.

**Warm-up** (``warmup_epochs``). The penalty is off during the first ``warmup_epochs`` epochs of a task's
TAPS training (0-based epochs e < warmup_epochs) and on from epoch ``warmup_epochs``. The official code
penalises when ``epoch > --warmup_epochs`` (default 2: epochs 0, 1, 2 unpenalised), so official
``--warmup_epochs k`` is ``warmup_epochs = k + 1`` here; the default 3 reproduces the official default.
With fewer epochs than that (taskshare's default run has 2) the penalty never switches on; the learners
warn once.

**Epoch counting.** The runner counts epochs; the learner counts training *samples* it has observed since
`begin_task` (or `begin_all`) and derives ``epoch = samples // len(train split)`` (the sum of the splits for
the offline learners). One epoch is exactly one pass over the split whatever the batch size or a short last
batch; the count is part of the checkpointed state, so a resumed run switches the penalty on at the same
step. Another driver may call `set_epoch(e)` at each epoch start instead.

**Task-specific parts.** The deltas and scores, every normalization layer (BatchNorm γ, β and running
statistics, LayerNorm/GroupNorm/RMSNorm affine) and the head are slots of one `TaskTensors` over the wrapped
network, so ``tt.activate(task)`` switches all of them (the official code trains every BN per task too; an
"inactive" layer therefore still has its task's BN, spec §4 pitfall 2). The head is new per task and not
gated. Everything else (the base weights, embeddings, ...) is shared and frozen in sequential TAPS.
Neither scores nor deltas are ever weight-decayed (their optimizer group has weight_decay 0; pitfall 10).

**Exactness.** A gated layer computes its base op on W + g·ΔW with g ∈ {0.0, 1.0} produced by an autograd
function, so with ΔW = 0 the outputs equal the base layer's bit for bit. Without gradients (inference) an
inactive layer uses W itself and an active one W + ΔW: the same values as the training path, and the same as
the folded weights of `merged_model`, so exported, merged and trained outputs agree exactly.

**Methods.**

- ``taps`` (sequential, paper's incremental setting): tasks one at a time from a frozen base; a task's
  tensors are its own objects, so earlier tasks stay bit-identical. ``backbone=``:
  ``auto`` (default): ``model`` for a pretrained backbone (``model=mobilenetv2`` or ``minilm``, which
  ``model=auto`` resolves to on transfer-images / transfer-text, or a ``backbone_module=``), else
  ``first-task``.
  ``first-task``: no pretrained backbone exists for the MNIST-like lifelong streams, and TAPS on a
  random frozen base would need nearly every layer (no sharing to discover). So the first task of the stream
  trains the whole network (base weights, its norms and head; its scores are set to 0 < τ: it *is* the base
  and adds no delta), then the base is frozen and every later task learns deltas against it, starting its
  norms from the first task's (the analogue of pretrained BN statistics). This is the official two-stage idea
  with a one-task first stage.
  ``model``: the backbone as built (``--set model=...``; random for mlp/cnn/resnet18, pretrained for
  ``model=mobilenetv2`` (ImageNet, 32 px) or ``minilm`` (also chosen by ``auto`` for pre-tokenized text), or
  the module passed as ``backbone_module=``) is the frozen base from the first task.
- ``taps-joint`` (paper's joint multi-task variant; offline): the shared base is trained with all tasks
  together with every task's deltas, scores, norms and head. Each mixed batch is split by task, one forward
  per task (its tensors activated); the loss is the sum of the per-task mean cross-entropies plus each
  present task's penalty (as the official joint script sums per-task losses).
- ``taps-two-stage`` (the official "efficient" variant; offline): stage 1, epochs [0, joint_epochs):
  multi-head hard-shared training of the base on all tasks (shared norms, one head per task, one forward per
  task per batch, per-task losses summed: official ``train_joint.py``). Stage 2, the remaining epochs:
  sequential TAPS of every task from that frozen base. Mapping onto the learner interface: the runner hands
  the tasks to `begin_all` and feeds mixed batches to `observe_mixed`; in stage 2 each batch's per-task
  parts take TAPS steps on that task's own tensors only. Because the base is frozen and the tasks' tensors
  are disjoint (per-parameter optimizer state, no coupling), this is exactly per-task sequential TAPS run
  side by side. The warm-up counts from the start of stage 2. Departures from the official pipeline: the
  stage-1 heads are kept for stage 2 (the official sequential script re-initialises the head because its
  hand-off is broken, spec §4 pitfall 7); the stage-1 shared norms are each task's starting norms.

**Official-compat mode** (sequential ``taps`` only). The official ``train_sequential.py`` (``train()``, lines
19-46; ``_finetune()``, lines 83-143) adds λ·Σ|s_i|/52 to every batch's loss from epoch ``warmup+1`` on, calls
``backward()`` on every batch, and steps the optimizer (then zeroes the gradients) only after batch i of an
epoch with ``i % 8 == 0``: the first step after batch 0 alone, then one per 8 summed (not averaged) batch
gradients, the penalty's gradient summed 8 times too. Gradients are never zeroed at an epoch start, so the
batches after an epoch's last step carry into the next epoch's first step (those of the last epoch are
dropped). The optimizer is SGD momentum 0.9, no Nesterov, wd 0; the lr follows CosineAnnealingLR(T_max=E)
stepped per epoch over E+1 epochs (the last one at lr 0). Two options reproduce this:

- ``accumulate`` (default 1: zero the gradients, backward, step on every batch, the usual loop). With
  ``accumulate=k > 1``: backward on every batch and a step (then zeroed gradients) after batch i of an
  epoch when i % k == 0, the batch index counted from each epoch start; the gradient left at an epoch end
  carries over (and is kept in checkpoints) and the one left at the task end is dropped. Official: 8.
- ``lr_schedule=cosine`` (default ``constant``): lr·(1 + cos(π·e/(epochs−1)))/2 in epoch e of each task.

So ``--set taps.backbone=model taps.penalty=official taps.accumulate=8 taps.lr_schedule=cosine
taps.warmup_epochs=3 optimizer=sgd momentum=0.9 weight_decay=0 lr=0.005 batch_size=32 epochs=31`` (with the
pretrained base given as ``backbone_module``) runs the official ``--lr 0.005 --epochs 30 --warmup_epochs 2``
mechanics: from the same initial tensors and batches, every score, delta, norm, head and loss follows the
official update to float rounding (its penalty rounds λ·Σ|s|/52 in another order), as the known-answer
test ``test_official_compat_step0_step1_known_answer`` checks against an independent re-implementation.
They are not the default because summing 8 batches' gradients makes the effective lr depend on
``accumulate`` and the batch size, and the 8× penalty makes λ's meaning depend on it too; by default one
batch is one step, λ is counted once per step, and the lr is constant, like every other taskshare method.
Not reproduced: the official data pipeline (RandomResizedCrop/flip augmentation, ImageFolder order), the
head's initial values (same Kaiming-uniform distribution, drawn from taskshare's task seed instead of the
global RNG), Nesterov (``train_sequential.py`` ignores its ``--optimizer nag``), weight decay on scores and
deltas when ``--wd`` > 0 (pitfall 10), ``--score_lr`` (unused by the official code too), and model selection
on test error (pitfall 4). taps-joint/taps-two-stage step on every batch (the official ``train_joint.py``
does too); they reject these options.

Transformers: ``layer_types=("Linear",)`` gates the query/key/value/output projections and the MLP layers
(e.g. BertModel's ``query``, ``key``, ``value``, ``dense``) and LayerNorms become task-specific, the analogue of
BN. The paper reports that on ViT TAPS mostly adapts the self-attention layers; the official ViT file gates
only the MLP (``fc1``/``fc2``), scales by the raw score and does not run (spec §1), so it is not followed.
nn.MultiheadAttention reads its projection weights directly (no submodule forward), so its ``out_proj`` cannot
be gated; it is skipped with a warning (HuggingFace attention uses plain Linear layers and is gated).

Artifacts: `export_task` writes a task with only its active layers' deltas (inactive ones are omitted and
equal the base's zeros on load), all scores, norms and head, with the gated/active layer lists and τ in the
metadata; `import_task` loads it onto a fresh wrapped base with checks. `merged_model` folds base + delta into
one plain weight per layer (a plain module, no gating overhead).

Python use with any network (e.g. a pretrained backbone with an integer ``out_dim``)::

    learner = Taps(cfg, Taps.Options(backbone="model", lambda_=0.5), input_shape, backbone_module=pretrained)
    tt = wrap(TaskNet(backbone))       # or wrap any nn.Module whose per-task head is the submodule "head"
    tt.add_task("cars", init=new_head_tensors); tt.activate("cars")   # deltas 0, scores 0.15, norms from base
    export_task(learner, "cars", "out/cars"); import_task(fresh_learner, "out/cars")
    plain = merged_model(learner, "cars")
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors, load_task, save_task
from taskshare.core.artifacts import read_artifact
from taskshare.errors import ArtifactError, ConfigError, TaskshareError
from taskshare.methods.base import Learner, default_model, task_seed
from taskshare.models import TaskNet, build_backbone, head_logits, new_head

TAU = 0.1
SCORE_INIT = 0.15
OFFICIAL_N = 52  # the official code's hard-coded normaliser (ResNet-50 has 53 convs)
PENALTIES = ("official", "size-weighted")
LR_SCHEDULES = ("constant", "cosine")
LAYER_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d,
                                           "Conv3d": nn.Conv3d}
DEFAULT_LAYER_TYPES = ("Conv2d", "Linear")
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_TAPS_LEAVES = ("delta", "delta_bias", "score")

__all__ = ["GatedLayer", "wrap", "gate_layers", "gated_layers", "taps_slots", "layer_sizes", "scores",
           "active_layers", "penalty", "task_penalty", "export_task", "import_task", "merged_model",
           "TapsOptions", "TapsJointOptions", "TapsTwoStageOptions", "Taps", "TapsJoint", "TapsTwoStage"]


# ------------------------------------------------------------------------------------------ the gate
class _StraightThroughGate(torch.autograd.Function):
    """Forward 1[s >= τ] as 0.0/1.0; backward passes the gradient straight through to s."""

    @staticmethod
    def forward(ctx, score: torch.Tensor, tau: float) -> torch.Tensor:
        return (score >= tau).to(score.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class GatedLayer(nn.Module):
    """Mixin of a gated Linear/Conv layer: base ``weight``/``bias`` plus ``delta``, ``delta_bias``, ``score``.

    A gated layer is the original module with its class swapped to ``Gated<Class>`` (a subclass of both this
    mixin and the original class), so parameter names stay ``<layer>.weight`` and isinstance checks hold.
    """

    taps_tau: float
    _taps_base: ClassVar[type[nn.Module]]

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task weight and bias: W + I(s)·ΔW (straight-through to s when the score is trained)."""
        w, b, d, db, s = self.weight, self.bias, self.delta, self.delta_bias, self.score
        if torch.is_grad_enabled() and s.requires_grad:
            g = _StraightThroughGate.apply(s, self.taps_tau).to(d.dtype)
            return w + g * d, (b + g * db if b is not None else None)
        if bool(s >= self.taps_tau):
            return w + d, (b + db if b is not None else None)
        return w, b

    def is_active(self) -> bool:
        return bool(self.score >= self.taps_tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective()
        return self._taps_apply(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.taps_tau:g}"


def _apply_linear(self, x, w, b):
    return F.linear(x, w, b)


def _apply_conv(self, x, w, b):
    return self._conv_forward(x, w, b)


_GATED_CLASSES: dict[type, type] = {}


def _gated_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _GATED_CLASSES:
        apply = _apply_linear if issubclass(cls, nn.Linear) else _apply_conv
        _GATED_CLASSES[cls] = type(f"Gated{cls.__name__}", (GatedLayer, cls),
                                   {"_taps_apply": apply, "_taps_base": cls, "__module__": __name__})
    return _GATED_CLASSES[cls]


def _layer_classes(layer_types) -> tuple[type[nn.Module], ...]:
    names = (layer_types,) if isinstance(layer_types, str) else tuple(layer_types)
    bad = [n for n in names if n not in LAYER_TYPES]
    if bad or not names:
        raise ConfigError(f"layer type {bad[0] if bad else '(none)'!r} cannot be gated: choose from "
                          f"{', '.join(LAYER_TYPES)} (e.g. --set taps.layer_types=[Conv2d,Linear])")
    return tuple(LAYER_TYPES[n] for n in names)


def _matches(module: nn.Module, classes: tuple[type[nn.Module], ...]) -> bool:
    # subclasses count only when they keep the base forward (e.g. MHA's NonDynamicallyQuantizableLinear)
    return any(type(module) is c or (isinstance(module, c) and type(module).forward is c.forward) for c in classes)


def _under(name: str, prefixes) -> bool:
    return any(p is not None and (name == p or name.startswith(p + ".")) for p in prefixes)


def gate_layers(model: nn.Module, layer_types=DEFAULT_LAYER_TYPES, *, tau: float = TAU,
                score_init: float = SCORE_INIT, exclude=("head",)) -> list[str]:
    """Gate every layer of `layer_types` in `model` in place (not those under `exclude`); returns their names.

    The new ``delta``/``delta_bias`` start at 0 and ``score`` at `score_init`; all three are created frozen
    (they are the *base* values of TaskTensors slots; each task gets its own trainable copies).
    """
    classes = _layer_classes(layer_types)
    in_mha = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    gated, skipped = [], []
    for name, module in list(model.named_modules()):
        if _under(name, exclude) or isinstance(module, GatedLayer) or not _matches(module, classes):
            continue
        if id(module) in in_mha:
            skipped.append(name)
            continue
        module.__class__ = _gated_class(type(module))
        w = module.weight
        module.register_parameter("delta", nn.Parameter(torch.zeros_like(w), requires_grad=False))
        bias = module.bias
        module.register_parameter("delta_bias", None if bias is None else
                                  nn.Parameter(torch.zeros_like(bias), requires_grad=False))
        module.register_parameter("score", nn.Parameter(torch.tensor(float(score_init), device=w.device),
                                                        requires_grad=False))
        module.taps_tau = float(tau)
        gated.append(name)
    if skipped:
        warnings.warn(f"TAPS cannot gate {', '.join(skipped)}: nn.MultiheadAttention reads these weights "
                      "directly; they stay shared (use an attention with Linear projections to gate them)",
                      stacklevel=2)
    return gated


def gated_layers(model: nn.Module) -> dict[str, GatedLayer]:
    """The gated layers of `model`, in network order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLayer)}


def taps_slots(model: nn.Module, head: str | None = "head") -> list[str]:
    """Slots of a gated model: every delta/delta_bias/score, every norm layer's tensors, the head's tensors."""
    slots: list[str] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, GatedLayer):
            slots += [prefix + leaf for leaf in _TAPS_LEAVES if getattr(m, leaf) is not None]
        elif isinstance(m, NORM_TYPES) and not _under(name, (head,)):
            slots += [prefix + n for n, t in [*m._parameters.items(), *m._buffers.items()] if t is not None]
    if head is not None:
        mod = model.get_submodule(head)
        slots += [f"{head}.{n}" for n, _ in [*mod.named_parameters(), *mod.named_buffers()]]
    return list(dict.fromkeys(slots))


def wrap(model: nn.Module, *, layer_types=DEFAULT_LAYER_TYPES, tau: float = TAU, score_init: float = SCORE_INIT,
         head: str | None = "head", freeze_base: bool = True) -> TaskTensors:
    """Gate `model` in place and return the TaskTensors over it (slots: see `taps_slots`).

    `head`: the qualified name of the per-task head module (not gated; None: no head). With `freeze_base`
    every shared parameter (base weights, embeddings, ...) gets requires_grad=False.
    """
    if head is not None:
        try:
            model.get_submodule(head)
        except AttributeError:
            raise ConfigError(f"{type(model).__name__} has no head module {head!r}: pass head=<module name> "
                              "or head=None") from None
    names = gate_layers(model, layer_types, tau=tau, score_init=score_init, exclude=(head,))
    if not names:
        raise ConfigError(f"{type(model).__name__} has no layer of types {', '.join(map(str, layer_types))} "
                          "outside the head to gate: choose other layer_types")
    tt = TaskTensors(model, taps_slots(model, head))
    if freeze_base:
        for p in tt.shared_parameters():
            p.requires_grad_(False)
    return tt


# ------------------------------------------------------------------------------------- scores, penalty
def _tt(source) -> TaskTensors:
    tt = getattr(source, "tt", source)
    if not isinstance(tt, TaskTensors):
        raise TaskshareError(f"expected a TAPS learner or TaskTensors, got {type(source).__name__}")
    return tt


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """|W_i|: elements of each gated layer's weight plus bias (what its deltas add when active)."""
    return {n: m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            for n, m in gated_layers(model).items()}


def scores(source, task: str) -> dict[str, float]:
    """Each gated layer's score for `task`."""
    tt = _tt(source)
    names = list(gated_layers(tt.model))
    ts = tt.tensors(task)
    values = torch.stack([ts[f"{n}.score"].detach().float() for n in names]).tolist() if names else []
    return dict(zip(names, values))


def active_layers(source, task: str) -> list[str]:
    """The gated layers whose delta is on for `task` (s >= τ, compared in the score's dtype as the forward does)."""
    tt = _tt(source)
    ts = tt.tensors(task)
    return [n for n, m in gated_layers(tt.model).items() if bool(ts[f"{n}.score"] >= m.taps_tau)]


def penalty(score_values: torch.Tensor, sizes: torch.Tensor, lambda_: float, mode: str = "official") -> torch.Tensor:
    """λ·R(s): ``official`` R = Σ|s_i| / 52; ``size-weighted`` R = Σ |W_i|·|s_i| / Σ |W_i|."""
    s = score_values.abs()
    if mode == "official":
        return s.sum() * (lambda_ / OFFICIAL_N)
    if mode == "size-weighted":
        weights = (sizes.double() / sizes.double().sum()).to(device=s.device, dtype=s.dtype)
        return (weights * s).sum() * lambda_
    raise ConfigError(f"penalty mode {mode!r} is unknown: choose one of {', '.join(PENALTIES)}")


def task_penalty(source, task: str, lambda_: float, mode: str = "official") -> torch.Tensor:
    """The penalty on `task`'s scores (differentiable with respect to them)."""
    tt = _tt(source)
    sizes = layer_sizes(tt.model)
    ts = tt.tensors(task)
    s = torch.stack([ts[f"{n}.score"] for n in sizes])
    return penalty(s, torch.tensor(list(sizes.values())), lambda_, mode)


# ---------------------------------------------------------------------------------- export, merging
def export_task(source, task: str, path: str | Path, *, meta: dict[str, Any] | None = None) -> int:
    """Write `task` as a per-task artifact with only the active layers' deltas; returns bytes written.

    The artifact holds every score, the active deltas, all norm tensors and the head; the metadata lists the
    gated and active layers, the scores and τ. Load it with `import_task` onto a wrapped base.
    """
    tt = _tt(source)
    layers = gated_layers(tt.model)
    active = set(active_layers(tt, task))
    omit = [f"{n}.{leaf}" for n, m in layers.items() if n not in active
            for leaf in ("delta", "delta_bias") if getattr(m, leaf) is not None]
    taus = {m.taps_tau for m in layers.values()}
    info = {"tau": taus.pop() if len(taus) == 1 else {n: m.taps_tau for n, m in layers.items()},
            "layers": list(layers), "active_layers": [n for n in layers if n in active],
            "scores": scores(tt, task)}
    return save_task(tt, task, path, omit=omit, meta={**(meta or {}), "taps": info})


def import_task(target, path: str | Path, task: str | None = None, *, replace: bool = False) -> str:
    """Load a `export_task` artifact onto a wrapped base (`target`: learner or TaskTensors); returns the task name.

    Besides `load_task`'s checks (same base fingerprint and slots), refuses an artifact whose gated layers or
    τ differ from the model's, or whose scores contradict its list of active layers.
    """
    tt = _tt(target)
    info = read_artifact(path)[0]["meta"].get("taps")  # the two files agree (checksums) before meta is read
    if not isinstance(info, dict):
        raise ArtifactError(f"{path} is not a TAPS export: write it with taskshare.methods.taps.export_task")
    layers = gated_layers(tt.model)
    if list(layers) != info["layers"]:
        raise ArtifactError(f"{path} was exported from a model with other gated layers: wrap the base with the "
                            "same layer_types as when it was trained")
    taus = info["tau"] if isinstance(info["tau"], dict) else dict.fromkeys(layers, info["tau"])
    if any(m.taps_tau != taus[n] for n, m in layers.items()):
        raise ArtifactError(f"{path} was trained with tau {info['tau']}, this model gates at another tau: "
                            "wrap the base with the same tau")
    name = load_task(tt, path, task, replace=replace)
    if active_layers(tt, name) != info["active_layers"]:
        tt.remove_task(name)
        raise ArtifactError(f"{path} is corrupted: its scores do not match its list of active layers; re-export it")
    return name


def merged_model(source, task: str | None = None) -> nn.Module:
    """A plain copy of the network for `task` (default: the active one) with W + ΔW folded into each layer.

    Gated layers become their original class (nn.Conv2d, nn.Linear, ...) holding W + ΔW when active and W
    when not; norms and head are the task's. No gating overhead: it runs at the base model's speed and gives
    the gated model's outputs exactly. Parameters are frozen and the copy is in eval mode.
    """
    tt = _tt(source)
    task = tt.active if task is None else task
    with tt.use(task), torch.no_grad():
        model = copy.deepcopy(tt.model)
        for m in gated_layers(model).values():
            w, b = m.effective()
            for leaf in _TAPS_LEAVES:
                del m._parameters[leaf]
            del m.taps_tau
            m.__class__ = m._taps_base
            m.weight = nn.Parameter(w)
            if b is not None:
                m.bias = nn.Parameter(b)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ------------------------------------------------------------------------------------------- options
def _check_common(o, section: str) -> None:
    if o.penalty not in PENALTIES:
        raise ConfigError(f"{section}.penalty={o.penalty!r} is unknown: choose one of {', '.join(PENALTIES)}")
    if not (math.isfinite(o.lambda_) and o.lambda_ >= 0):
        raise ConfigError(f"{section}.lambda must be >= 0, got {o.lambda_}")
    if not (math.isfinite(o.tau) and o.tau > 0):
        raise ConfigError(f"{section}.tau must be > 0 (the L1 penalty pulls scores to 0), got {o.tau}")
    if not math.isfinite(o.score_init):
        raise ConfigError(f"{section}.score_init must be a finite number, got {o.score_init}")
    if o.warmup_epochs < 0:
        raise ConfigError(f"{section}.warmup_epochs must be >= 0, got {o.warmup_epochs}")
    if o.bn_samples < 0:
        raise ConfigError(f"{section}.bn_samples must be >= 0, got {o.bn_samples}")
    if o.accumulate < 1:
        raise ConfigError(f"{section}.accumulate must be >= 1 (batches per optimizer step), got {o.accumulate}")
    if o.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"{section}.lr_schedule={o.lr_schedule!r} is unknown: choose one of "
                          f"{', '.join(LR_SCHEDULES)}")
    if not o.OFFICIAL_MECHANICS and (o.accumulate != 1 or o.lr_schedule != "constant"):
        raise ConfigError(f"{section}.accumulate and {section}.lr_schedule are the official sequential script's "
                          "mechanics and only supported by method taps: leave them at 1 and constant")
    if o.backbone not in o.BACKBONES:
        raise ConfigError(f"{section}.backbone={o.backbone!r} is not valid: choose one of {', '.join(o.BACKBONES)}")
    bad = [t for t in o.layer_types if t not in LAYER_TYPES]
    if bad or not o.layer_types:
        raise ConfigError(f"{section}.layer_types has {bad[0] if bad else 'no types'!r}: choose from "
                          f"{', '.join(LAYER_TYPES)}, e.g. --set {section}.layer_types=[Conv2d,Linear]")


@dataclass
class TapsOptions:
    """Sequential TAPS (``--set taps.<option>=...``; ``lambda`` sets ``lambda_``)."""

    lambda_: float = 1.0                 # λ (official default --lam 1; README CUB example 0.1)
    penalty: str = "official"            # official (Σ|s|/52) | size-weighted (Σ|W_i||s_i| / Σ|W_i|)
    tau: float = TAU                     # gate threshold, inclusive
    score_init: float = SCORE_INIT
    warmup_epochs: int = 3               # penalty off in epochs 0..warmup_epochs-1 (official --warmup_epochs 2)
    layer_types: tuple[str, ...] = DEFAULT_LAYER_TYPES
    backbone: str = "auto"               # auto | first-task | model (see the module docstring)
    bn_samples: int = 0                  # sequential taps: re-estimate the task's BN statistics at its end on
                                         # this many training samples (0: off, the running averages are kept)
    accumulate: int = 1                  # official-compat (sequential taps only): sum the gradients of the
                                         # batches, step after batch i of an epoch when i % accumulate == 0
                                         # (official 8); the leftover carries into the next epoch
    lr_schedule: str = "constant"        # constant | cosine (official-compat, sequential taps only: per-epoch
                                         # cosine over each task, last epoch at lr 0)

    SECTION: ClassVar[str] = "taps"
    BACKBONES: ClassVar[tuple[str, ...]] = ("auto", "first-task", "model")
    OFFICIAL_MECHANICS: ClassVar[bool] = True  # accumulate / lr_schedule supported

    def __post_init__(self) -> None:
        self.layer_types = (self.layer_types,) if isinstance(self.layer_types, str) else tuple(self.layer_types)
        _check_common(self, self.SECTION)


@dataclass
class TapsJointOptions(TapsOptions):
    """Joint TAPS: the base (the model as built) is trained with all tasks."""

    backbone: str = "model"
    SECTION: ClassVar[str] = "taps-joint"
    BACKBONES: ClassVar[tuple[str, ...]] = ("model",)
    OFFICIAL_MECHANICS: ClassVar[bool] = False


@dataclass
class TapsTwoStageOptions(TapsJointOptions):
    """Two-stage TAPS: `joint_epochs` of multi-head joint training, then TAPS (default: half the epochs)."""

    joint_epochs: int | None = None
    SECTION: ClassVar[str] = "taps-two-stage"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.joint_epochs is not None and self.joint_epochs < 1:
            raise ConfigError(f"{self.SECTION}.joint_epochs must be >= 1, got {self.joint_epochs}")


# ------------------------------------------------------------------------------------------ learners
PRETRAINED_MODELS = ("mobilenetv2", "mobilenetv2-random", "minilm")


def taps_backbone(cfg, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """``cfg.model``: mlp/cnn/resnet18, or the model-patches backbones mobilenetv2 (ImageNet, 32 px),
    mobilenetv2-random and minilm; ``auto`` is minilm for pre-tokenized text (2, L), else mlp/resnet18."""
    from taskshare.methods.patches import PatchOptions, build_patch_backbone, token_input

    name = "minilm" if cfg.model == "auto" and token_input(input_shape) else cfg.model
    if name in PRETRAINED_MODELS:
        return build_patch_backbone(PatchOptions(backbone=name), name, input_shape, seed)
    return build_backbone(default_model(cfg, input_shape), input_shape, seed)


def _token_input(input_shape: tuple[int, ...]) -> bool:
    from taskshare.methods.patches import token_input
    return token_input(input_shape)


class _TapsLearner(Learner):
    """Shared machinery: the wrapped TaskNet, task creation, optimizer groups, penalty, epoch counting."""

    Options = TapsOptions

    def __init__(self, cfg, options, input_shape, backbone_module: nn.Module | None = None):
        super().__init__(cfg, options if options is not None else self.Options(), input_shape)
        o = self.options
        if backbone_module is None:
            backbone = taps_backbone(cfg, input_shape, task_seed(cfg.seed, 0, salt=1))
        else:
            backbone = backbone_module
        if not isinstance(getattr(backbone, "out_dim", None), int):
            raise ConfigError(f"backbone {type(backbone).__name__} has no integer out_dim: set "
                              "backbone.out_dim to its feature size before passing it")
        self.backbone_mode = o.backbone  # auto: a pretrained base stays frozen, a random one learns task 1
        if o.backbone == "auto":
            pretrained = backbone_module is not None or cfg.model in ("mobilenetv2", "minilm") or (
                cfg.model == "auto" and _token_input(input_shape))
            self.backbone_mode = "model" if pretrained else "first-task"
        self.net = TaskNet(backbone).to(self.device)
        self.tt = wrap(self.net, layer_types=o.layer_types, tau=o.tau, score_init=o.score_init, head="head")
        self.layers = list(gated_layers(self.net))
        self._score_slots = [f"{n}.score" for n in self.layers]
        self._sizes = torch.tensor(list(layer_sizes(self.net).values()))
        self._taps_slots = {s for s in self.tt.slots if s.rsplit(".", 1)[-1] in _TAPS_LEAVES}
        self._norm_slots = [s for s in self.tt.slots if s not in self._taps_slots and not s.startswith("head.")]
        self.current: str | None = None
        self.seen = 0          # training samples observed since begin_task / begin_all
        self.epoch_size = 1    # samples per epoch
        self._warned = False

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
        groups = [{"params": undecayed, "weight_decay": 0.0},
                  {"params": decayed, "weight_decay": self.cfg.weight_decay}]
        groups = [g for g in groups if g["params"]]
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.cfg.lr)
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum)

    # -- penalty and epochs
    @property
    def epoch(self) -> int:
        """The 0-based epoch of the next batch (samples observed // samples per epoch)."""
        return self.seen // self.epoch_size

    def set_epoch(self, epoch: int) -> None:
        """For drivers other than the runner: declare that epoch `epoch` starts now."""
        self.seen = epoch * self.epoch_size

    def penalty(self, task: str) -> torch.Tensor:
        ts = self.tt.tensors(task)
        s = torch.stack([ts[n] for n in self._score_slots])
        return penalty(s, self._sizes, self.options.lambda_, self.options.penalty)

    def _warn_warmup(self, epochs: int) -> None:
        o = self.options
        if o.lambda_ > 0 and o.warmup_epochs >= epochs and not self._warned:
            self._warned = True
            warnings.warn(f"{self.name}: warmup_epochs={o.warmup_epochs} >= {epochs} TAPS epochs, so the sparsity "
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
            self._warn_warmup(self.cfg.epochs)

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
        if not self._trains_base and o.lambda_ > 0 and epoch >= o.warmup_epochs:
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
        self._warn_warmup(self.cfg.epochs)

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
        penalise = self.options.lambda_ > 0 and self.epoch >= self.options.warmup_epochs
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
        self._warn_warmup(self.cfg.epochs - self.joint_epochs)

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
            penalise = o.lambda_ > 0 and self.epoch - self.joint_epochs >= o.warmup_epochs
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
