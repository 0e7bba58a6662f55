"""PAR: task-difficulty-aware parameter allocation and regularization (Wang et al., CVPR 2023).

Task-incremental lifelong learning with a growing set of **experts** (cell networks, `expert.py`) and one
linear head per task. For each new task t (official code WenjinW/PAR@5539e08, ``src/approaches/par_v2.py``):

1. **Relatedness** (`relatedness.py`): features of t's validation split from a frozen extractor, the
   nearest-prototype divergence D(t||p) to every learned task p, s(t, p) = min(1 - exp(-2D), D); t's class
   prototypes are stored for later tasks.
2. **Routing** (`routing.py`): expert score S_e = mean of s over the expert's tasks, e* = argmin, and
   three tiers (0.5 / 0.75): reuse e*, allocate a new expert with e*'s genotype, allocate with search.
   Task 0 always searches. Every task's decision is appended to ``decisions`` (for results.json):
   ``{task, index, action, expert, closest, scores, relatedness, reuse, reuse_from, unit, unit_from,
   genotype_from, ..., added_params, added_buffers}`` (``action`` is always the routing tier;
   ``unit`` says what was allocated: ``expert``, ``patch``/``taps`` (below), None for a reuse;
   ``added_*`` are written at the task's end). Decisions hold no wall times, so they (and the artifacts
   that carry them) are byte-reproducible; each search's seconds go to results.json's
   ``timing.par_search_s`` (`extra_results`).
3. **Regularized reuse** of e*: if N_t < 0.5 · N_max(e*) (the largest training set on e*), only the new
   head is trained, the expert frozen in eval mode (zero forgetting). Otherwise the expert is fine-tuned
   together with the new head (**transfer**), with LwF-style distillation on the heads of e*'s earlier tasks
   against a frozen copy of e* taken before t:

       L = CE(head_t(f(x)), y) + kd_weight · sum_{p on e*} KD_T(head_p(f(x)), head_p(f_teacher(x)))
       KD_T(z, z') = - sum_c q_c log p~_c,  q = softmax(z'/T),  p~ = (softmax(z/T) + eps/C) / (1 + eps)

   T = 2, kd_weight = 1, eps = 1e-5 (the official ``utils.cross_entropy(exp=1/2)``: p^(1/2) renormalised is
   softmax(z/2)). The earlier heads are frozen (official: only the expert and the new head train); experts
   other than e* are never touched.
4. **Allocation**: a new expert (fresh weights from (seed, task index)) and head, trained from scratch; its
   genotype is e*'s (middle tier, the "relatedness-aware" shortcut) or searched by MdeNAS (`search.py`).

**Allocation units (beyond the paper; ``unit``).** ``expert`` (default) is the paper. With ``patch`` or
``taps``, a task routed to allocation (``allocate`` or ``allocate-search``) while an expert exists gets a
small unit on e* (the best-scored expert) instead of a new expert; no search runs. Task 0 still searches and
allocates a real expert, so such a run grows a single expert. The decision keeps its routing ``action`` and
records ``unit`` and ``unit_from`` (the expert's owner, whose tensors the unit starts from).

- ``patch``: a scale-bias+head model patch (Mudrakarta et al. 2019, `taskshare.methods.patches`): the task's
  own head and every BatchNorm's scale, bias and running statistics (trained in train mode); the expert's
  convolution weights are frozen for it. Adds head + BN scale/bias parameters (+ statistics as buffers).
- ``taps``: the same plus TAPS (Wallingford et al. 2022, `taskshare.methods.taps`) gated deltas on every
  convolution of the expert: W + 1[s >= tau]·dW, deltas from 0, scores from 0.15, trained with the TAPS
  sparsity penalty ``taps_lambda`` · R(s) (``taps_penalty``: official sum|s|/52 or size-weighted; off during
  the first ``taps_warmup_epochs`` epochs of the task; deltas and scores not weight-decayed). Adds the patch's
  parameters + one score per convolution + the deltas of the layers left active (they alone are stored).

The first unit converts the expert's `TaskTensors` to a larger slot layout (`units.py`): every task on it
gets its own copy of the BN tensors (and zero, switched-off deltas), equal to what it used, so every earlier
task computes exactly the same outputs; later no task can change another's BN. A unit never touches the
expert's weights or another task's tensors. Units do not count in their expert's score S_e (``score_units``
false, the default): the expert is scored by the tasks that use its own function, its owner and the
tasks that reuse it, so an unrelated unit does not push a task related to the owner away from reuse
(``score_units=true`` scores every task on the expert). Units do not count in N_max either (they do not
train the expert's weights). **Reuse composes**: a task reusing
an expert that carries units starts from the tensors (BN, unit) of its most related task on that expert
(``reuse_from``; the owner on a plain expert), frozen, plus its new head; a transfer reuse fine-tunes the
expert's shared weights and its head, and its KD term runs each earlier task p with p's own tensors in
the student and the teacher (both in eval mode, so p's statistics never move), one pass per group of tasks
with equal tensors.

**BatchNorm under transfer** (``bn``). The official code fine-tunes the reused expert with BN in train
mode, so the running statistics that earlier tasks on that expert are evaluated with drift towards the new
task's data (an unstated source of forgetting), and its KD compares a train-mode student with an eval-mode
teacher (the KD gradient is not zero even at step 0). Options:

- ``frozen`` (default): during transfer the whole expert runs in eval mode: running statistics stay those
  of the allocating task for every task on the expert (BN scale/shift still train, under KD). The student
  is then exactly the function old tasks are evaluated with, so KD regularizes what is measured and its
  gradient at step 0 is ~0 (only the eps smoothing).
- ``task``: BN running statistics are per-task slots of the expert's TaskTensors: the new task starts from
  the allocating task's statistics and updates its own in train mode; earlier tasks keep theirs.
- ``shared``: the official behaviour (one set of statistics per expert, drifting under transfer).

Head-only reuse always runs the expert in eval mode (as the official ``train_fc``).

**Feature extractor** (``extractor``): ``auto`` (default) is the frozen ImageNet MobileNetV2 (1280-d)
when its weights are installed, else the raw flattened inputs (the resolved name is recorded in every
decision); ``mobilenetv2`` / ``raw`` force one. The official code uses an ImageNet ResNet-18 at native
resolution; MobileNetV2 is taskshare's shipped ImageNet network (``extractor_image_size`` resizes, 0 =
native). ``expert`` uses the experts' own features: t's validation data through the expert of each p
(with p's head/statistics bound) against p's prototypes in that expert's space, computed at the end of p
(they go stale if p's expert is later fine-tuned). `set_extractor(fn)` plugs any callable x -> features.
Relatedness uses t's validation split (official); if it has fewer than 2 samples in some class, the
training split is added (recorded as ``relatedness_split``). ``loo`` corrects the estimator's sample-size
bias (see `relatedness.py`); ``zero_is_unrelated`` is the official s = 0 -> 1 quirk.

**Official-code details not reproduced** (they belong to the runner's protocol, which is shared by all
methods): best-validation checkpoint selection and early stopping, per-phase LR schedulers, 10x weight
decay for N <= 25. Gradient clipping (10) is ``clip_grad``. Search uses the run's lr, momentum and weight
decay with a cosine schedule and clipping 5, as the official search.

**Artifacts** (`save_artifact` / `load_artifact`): a task's artifact holds what it added (see
`tensors.py`: an owner's holds its whole expert; the others their head and own BN statistics or unit) and
its prototypes, with the expert's genotype, layout, size options and the task's decision in the metadata.
An owner's artifact loads onto a fresh learner with the same ``channels``/``cells``/``stem_multiplier``/``bn``;
another task's loads once its expert's owner (and the task it started from) is loaded, onto the same
expert tensors (fingerprint). The predictions are then exactly the saved learner's.

**Checkpoints**: `state_dict` holds every expert's genotype, slot layout and TaskTensors state, the routing tables,
prototypes, decisions, the transfer teacher and the optimizer; `load_state_dict` rebuilds experts of other
architectures from their genotypes (in place when they already exist, so a live optimizer stays valid).
Every random draw (expert and head initialisation, search split/batches/samples) derives from
``task_seed(seed, task index, salt)``, so a resumed run repeats an interrupted search exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors, save_task
from taskshare.core.artifacts import artifact_paths, read_artifact
from taskshare.data.datasets import stratified_order
from taskshare.errors import ArtifactError, ConfigError, TaskshareError
from taskshare.methods.base import Learner, make_optimizer, task_seed, train_mode
from taskshare.methods.blocks.distillation import distillation
from taskshare.methods.par.expert import ExpertNet, Genotype, build_expert
from taskshare.methods.par.relatedness import (Extractor, extract_features, make_extractor, prototypes,
                                               task_relatedness)
from taskshare.methods.par.routing import SCORES, expert_scores, route
from taskshare.methods.par.search import search
from taskshare.methods.par.tensors import ArtifactView, PARTensors
from taskshare.methods.par.units import (LAYOUTS, UNIT_KINDS, convert, gate, is_taps_slot, kd_groups, layout_slots,
                                         leaf, unit_trainable)
from taskshare.methods.blocks.gating import PENALTIES, SCORE_INIT, active_layers, gated_layers, layer_sizes, penalty
from taskshare.models import HEAD_SLOTS, head_logits, new_head

BN_MODES = ("frozen", "task", "shared")
EXTRACTORS = ("auto", "mobilenetv2", "raw", "expert")
UNITS = ("expert",) + UNIT_KINDS
PROTOTYPES = "par.prototypes"                # extra tensors of an artifact (not module tensors)
EXPERT_PROTOTYPES = "par.expert_prototypes"


@dataclass
class Options:
    reuse_threshold: float = 0.5      # S_e* <= this: reuse e*
    cell_threshold: float = 0.75      # S_e* <= this: new expert with e*'s genotype; above: search
    score: str = "mean"               # expert score over its tasks: mean | max | min
    few_shot_max: int = 0             # N_train <= this: reuse an expert with >= few_shot_ratio·N (official: 25)
    few_shot_ratio: float = 10.0
    head_only_ratio: float = 0.5      # reuse trains only the head when N_t < ratio · N_max(e*)
    extractor: str = "auto"           # auto | mobilenetv2 | raw | expert
    extractor_image_size: int = 0     # resize before MobileNetV2 (0: native resolution)
    loo: bool = False                 # leave-one-out prototypes: removes the estimator's 1/n bias
    zero_is_unrelated: bool = False   # official quirk: s = 0 (identical samples) counts as unrelated (s = 1)
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    kd_smoothing: float = 1e-5        # eps of the official soft cross-entropy (0: plain LwF distillation)
    bn: str = "frozen"                # BatchNorm under transfer: frozen | task | shared (official)
    channels: int = 16                # C (official 64); features are steps·C
    cells: int = 4                    # official 4; cells L//3 and 2L//3 reduce
    steps: int = 4                    # nodes per cell (official 4)
    stem_multiplier: int = 3          # official 3 (the supernet uses 1)
    search_epochs: int = 10           # MdeNAS samples (= supernet epochs); official 50 (CTrL) / 100
    search_lr_p: float = 0.01         # MdeNAS probability step (official lr_search)
    search_limit: int = 0             # cap on training samples used by the search (0: all)
    clip_grad: float = 10.0           # gradient-norm clipping in training (official 10; 0: off)
    unit: str = "expert"              # allocation unit: expert (paper) | patch | taps (beyond the paper)
    taps_lambda: float = 1.0          # unit=taps: lambda of the TAPS sparsity penalty (TAPS default 1)
    taps_penalty: str = "official"    # unit=taps: official (sum|s|/52) | size-weighted (see methods/taps/)
    taps_warmup_epochs: int = 0       # unit=taps: penalty off in the unit's first epochs
    score_units: bool = False         # units count in their expert's score S_e (default: owner + reusers only)

    def __post_init__(self):
        if not 0 <= self.reuse_threshold <= self.cell_threshold:
            raise ValueError("thresholds need 0 <= reuse_threshold <= cell_threshold")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {', '.join(EXTRACTORS)}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.taps_penalty not in PENALTIES:
            raise ValueError(f"taps_penalty must be one of {', '.join(PENALTIES)}")
        if not (math.isfinite(self.taps_lambda) and self.taps_lambda >= 0) or self.taps_warmup_epochs < 0:
            raise ValueError("taps_lambda and taps_warmup_epochs must be >= 0")
        if self.kd_temperature <= 0 or self.kd_weight < 0 or not 0 <= self.kd_smoothing < 1:
            raise ValueError("kd_temperature must be > 0, kd_weight >= 0 and kd_smoothing in [0, 1)")
        if min(self.channels, self.cells, self.steps, self.stem_multiplier) < 1 or self.channels % 2:
            raise ValueError("channels (even), cells, steps and stem_multiplier must be >= 1")
        if min(self.search_epochs, self.search_limit, self.few_shot_max, self.extractor_image_size) < 0:
            raise ValueError("search_epochs, search_limit, few_shot_max and extractor_image_size must be >= 0")
        if self.head_only_ratio < 0 or self.few_shot_ratio < 0 or self.clip_grad < 0:
            raise ValueError("head_only_ratio, few_shot_ratio and clip_grad must be >= 0")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
            smoothing: float = 0.0) -> torch.Tensor:
    """Soft cross-entropy of softmax(teacher/T) against the (eps-smoothed) softmax(student/T), batch mean."""
    if smoothing == 0:
        return distillation(student, teacher, temperature)
    target = F.softmax(teacher / temperature, dim=1)
    p = (F.softmax(student / temperature, dim=1) + smoothing / student.shape[1]) / (1 + smoothing)
    return -(target * p.log()).sum(1).mean()


@dataclass
class Expert:
    genotype: Genotype
    in_channels: int
    net: ExpertNet
    tt: TaskTensors
    tasks: list[str]
    max_train: int                    # the largest training set that trained the expert (owner, reuses)
    layout: str = "expert"            # which tensors are per-task slots (`units.py`): expert | patch | taps

    @property
    def owner(self) -> str:
        return self.tasks[0]


class PAR(Learner):
    name = "par"
    description = "PAR: relatedness-routed reuse (LwF-regularized) or new searched experts per task"
    Options = Options
    not_data_parallel = "its architecture search and gradient clipping run on each rank's own data"

    def __init__(self, cfg, options, input_shape):
        super().__init__(cfg, options, input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(f"PAR's cell experts need image inputs (C, H, W), got shape {self.input_shape}: "
                              "use an image benchmark")
        self.experts: list[Expert] = []
        self.task_expert: dict[str, int] = {}
        self.prototypes: dict[str, torch.Tensor] = {}         # extractor-space class means per learned task
        self.expert_prototypes: dict[str, torch.Tensor] = {}  # extractor="expert": in the task's expert space
        self.decisions: list[dict[str, Any]] = []
        self.search_seconds: dict[str, float] = {}  # wall time of each task's search: results.json "timing" only
        self.current: str | None = None
        self._mode: str | None = None
        self.teacher: Expert | None = None
        self._params: list[nn.Parameter] = []
        self._extractor: Extractor | None = None
        self.extractor_name: str | None = None
        self._seen = 0                     # training samples observed in the current task (TAPS warm-up)
        self._epoch_size = 1
        self._scores: list[torch.Tensor] = []     # unit=taps: the current task's score tensors ...
        self._sizes = torch.zeros(0)              # ... and the gated layers' sizes (size-weighted penalty)
        self._kd_groups: list[tuple[str, list[str]]] = []
        self.tt = PARTensors(self)

    # ------------------------------------------------------------------------------------------ helpers
    def expert_of(self, task: str) -> Expert:
        if task not in self.task_expert:
            known = ", ".join(self.task_expert) or "none yet"
            raise TaskshareError(f"unknown task {task!r}: PAR has learned {known}; pass the name of a trained task")
        return self.experts[self.task_expert[task]]

    def decision(self, task: str) -> dict[str, Any]:
        return next(d for d in self.decisions if d["task"] == task)

    def role(self, task: str) -> str:
        """``owner`` (allocated its expert), ``reuse`` (a head on a reused expert) or ``unit`` (a patch/TAPS unit)."""
        d = self.decision(task)
        if d.get("unit") in UNIT_KINDS:
            return "unit"
        return "owner" if d["reuse"] is None else "reuse"

    def _scored_tasks(self, expert) -> list[str]:
        """The tasks whose relatedness scores `expert`: all of them, or without the units (``score_units``)."""
        if self.options.score_units:
            return list(expert.tasks)
        return [p for p in expert.tasks if self.role(p) != "unit"] or list(expert.tasks)

    def set_extractor(self, fn: Extractor, name: str = "custom") -> None:
        """Use `fn` (x -> features) for relatedness instead of the configured extractor."""
        self._extractor, self.extractor_name = fn, name

    def extractor(self) -> Extractor:
        if self._extractor is None:
            image_size = self.options.extractor_image_size or None
            restored = self.extractor_name
            self._extractor, self.extractor_name = make_extractor(self.options.extractor, self.input_shape,
                                                                  image_size=image_size, device=self.device)
            if restored not in (None, self.extractor_name):
                raise ConfigError(f"this run's relatedness used the {restored} extractor, but here it resolves to "
                                  f"{self.extractor_name}: resume where the same extractor is available")
        return self._extractor

    def _build(self, genotype: Genotype, in_channels: int, seed: int,
               layout: str = "expert") -> tuple[ExpertNet, TaskTensors]:
        o = self.options
        net = build_expert(genotype, in_channels, o.channels, o.cells, o.stem_multiplier, seed)
        net = net.to(self.device)  # contiguous format: channels_last crashes oneDNN on AVX2 (docs/known-issues.md)
        if layout == "taps":
            gate(net)
        return net, TaskTensors(net, layout_slots(net, layout, o.bn == "task"))

    def _convert(self, expert: Expert, layout: str) -> None:
        """Grow `expert`'s slot layout to `layout` (no-op when it already has it); every task keeps its outputs."""
        if LAYOUTS.index(expert.layout) >= LAYOUTS.index(layout):
            return
        expert.tt = convert(expert.net, expert.tt, layout, self.options.bn == "task")
        expert.layout = layout

    def _head(self, feature_dim: int, num_classes: int, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=12))
        return {k: v.to(self.device) for k, v in new_head(feature_dim, num_classes, gen).items()}

    def _clone(self, expert: Expert) -> Expert:
        """A frozen copy (the transfer teacher), rebuilt from the genotype and the tensors' state."""
        net, tt = self._build(expert.genotype, expert.in_channels, 0, expert.layout)
        tt.load_state(expert.tt.state())
        net.requires_grad_(False).eval()
        return Expert(expert.genotype, expert.in_channels, net, tt, list(expert.tasks), expert.max_train,
                      expert.layout)

    # ----------------------------------------------------------------------------------- relatedness
    def _split_features(self, task, fn) -> tuple[torch.Tensor, torch.Tensor, str]:
        bs, desc = self.cfg.eval_batch_size, f"PAR relatedness, task {task.name}"
        if len(task.val):
            f, y = extract_features(fn, task.val, bs, self.device, desc)
            counts = torch.bincount(y)
            if int(counts[counts > 0].min()) >= 2:
                return f, y, "val"
            ft, yt = extract_features(fn, task.train, bs, self.device, desc)
            return torch.cat([f, ft]), torch.cat([y, yt]), "train+val"
        f, y = extract_features(fn, task.train, bs, self.device, desc)
        return f, y, "train"

    def _expert_fn(self, expert: Expert, task: str) -> Extractor:
        def fn(x: torch.Tensor) -> torch.Tensor:
            train_mode(expert.net, False)
            with expert.tt.use(task):
                return expert.net.features(x)
        return fn

    def _relatedness(self, task) -> tuple[dict[str, float], dict[str, float], str]:
        """s(t, p) and D(t||p) for every learned task p; stores t's prototypes (extractor modes)."""
        o = self.options
        rel: dict[str, float] = {}
        div: dict[str, float] = {}
        kw = dict(loo=o.loo, zero_is_unrelated=o.zero_is_unrelated, num_classes=task.num_classes)
        if o.extractor == "expert" and self._extractor is None:
            self.extractor_name = "expert"
            split, cache = "val", {}
            for p, e in self.task_expert.items():
                # tasks sharing BN statistics (and no unit) see the same features
                key = p if o.bn == "task" or self.experts[e].layout != "expert" else e
                if key not in cache:
                    cache[key] = self._split_features(task, self._expert_fn(self.experts[e], p))
                f, y, split = cache[key]
                rel[p], div[p] = task_relatedness(f, y, self.expert_prototypes[p], **kw)
            return rel, div, split
        f, y, split = self._split_features(task, self.extractor())
        for p, protos in self.prototypes.items():
            rel[p], div[p] = task_relatedness(f, y, protos, **kw)
        self.prototypes[task.name] = prototypes(f, y, task.num_classes)
        return rel, div, split

    # ------------------------------------------------------------------------------------------ tasks
    def begin_task(self, task, index: int) -> None:
        self._epoch_size = max(1, len(task.train))
        if task.name in self.task_expert:  # restored from a checkpoint in the middle of this task
            self._start(task.name)
            return
        self._seen = 0
        o = self.options
        n_train = len(task.train)
        rel, div, split = self._relatedness(task)
        scores = expert_scores(rel, [self._scored_tasks(e) for e in self.experts], o.score)
        action, closest = route(scores, n_train=n_train, expert_max_train=[e.max_train for e in self.experts],
                                reuse_threshold=o.reuse_threshold, cell_threshold=o.cell_threshold,
                                few_shot_max=o.few_shot_max, few_shot_ratio=o.few_shot_ratio)
        record: dict[str, Any] = {
            "task": task.name, "index": index, "action": action, "expert": None, "closest": closest,
            "scores": scores, "relatedness": rel, "divergence": div, "n_train": n_train, "reuse": None,
            "reuse_from": None, "unit": None, "unit_from": None,
            "genotype_from": None, "genotype": None, "search_acc": None,
            "extractor": self.extractor_name, "relatedness_split": split}
        if action == "reuse":
            expert = self.experts[closest]
            head_only = n_train < o.head_only_ratio * expert.max_train
            record["reuse"] = "head" if head_only else "transfer"
            if expert.layout == "expert":  # every task on the expert computes the same features
                source, trainable = expert.owner, True
            else:  # tasks differ by their BN/units: start from the most related one's, train the head (+ expert)
                source = min(expert.tasks, key=lambda p: (rel[p], expert.tasks.index(p)))
                trainable = list(HEAD_SLOTS)
            record["reuse_from"] = source
            if not head_only:
                self.teacher = self._clone(expert)
            expert.tt.add_task(task.name, self._head(expert.net.feature_dim, task.num_classes, index),
                               copy_from=source, trainable=trainable)
            expert.tasks.append(task.name)
            expert.max_train = max(expert.max_train, n_train)
            self.task_expert[task.name] = closest
        elif o.unit in UNIT_KINDS and closest is not None:  # beyond the paper: a unit on the closest expert
            expert = self.experts[closest]
            self._convert(expert, o.unit)
            init = self._head(expert.net.feature_dim, task.num_classes, index)
            base = expert.tt.base_tensors()
            for s in expert.tt.slots:
                if is_taps_slot(s):  # fresh deltas; scores at score_init (on) for a TAPS unit, 0 (off) otherwise
                    value = SCORE_INIT if o.unit == "taps" else 0.0
                    init[s] = torch.full_like(base[s], value) if leaf(s) == "score" else torch.zeros_like(base[s])
            expert.tt.add_task(task.name, init, copy_from=expert.owner, trainable=unit_trainable(expert.tt, o.unit))
            expert.tasks.append(task.name)  # max_train stays: a unit does not train the expert's weights
            self.task_expert[task.name] = closest
            record["unit"], record["unit_from"] = o.unit, expert.owner
        else:
            record["unit"] = "expert"
            if action == "allocate":
                genotype = self.experts[closest].genotype
                record["genotype_from"] = self.experts[closest].owner
            else:
                x, y = task.train.to_tensors()
                if o.search_limit and len(y) > o.search_limit:
                    keep = stratified_order(y, task_seed(self.cfg.seed, index, salt=14))[:o.search_limit]
                    x, y = x[keep], y[keep]
                result = search(x, y, task.num_classes, epochs=o.search_epochs,
                                seed=task_seed(self.cfg.seed, index, salt=13), channels=o.channels,
                                n_cells=o.cells, steps=o.steps, batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                                momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay,
                                lr_p=o.search_lr_p, device=self.device, desc=f"PAR search, task {task.name}")
                genotype = result.genotype
                self.search_seconds[task.name] = round(result.seconds, 3)
                record["search_acc"] = result.accuracies
            in_channels = int(task.input_shape[0])
            net, tt = self._build(genotype, in_channels, task_seed(self.cfg.seed, index, salt=11))
            tt.add_task(task.name, self._head(net.feature_dim, task.num_classes, index))
            self.experts.append(Expert(genotype, in_channels, net, tt, [task.name], n_train))
            self.task_expert[task.name] = len(self.experts) - 1
        record["expert"] = self.task_expert[task.name]
        record["genotype"] = self.experts[record["expert"]].genotype.to_dict()
        self.decisions.append(record)
        self._start(task.name)

    def _start(self, task: str) -> None:
        """Bind `task` on its expert and build the optimizer over what this task trains."""
        self.current = task
        d = self.decision(task)
        # None (allocation) | "head" | "transfer" | "unit"
        self._mode = "unit" if d.get("unit") in UNIT_KINDS else d["reuse"]
        expert = self.expert_of(task)
        expert.tt.activate(task)
        for p in expert.tt.shared_parameters():  # a unit never changes the expert's weights
            p.requires_grad_(self._mode != "unit")
        self._kd_groups, self._scores, self._sizes = [], [], torch.zeros(0)
        if self._mode == "unit":
            self._params = expert.tt.parameters(task)
            self.optimizer = self._unit_optimizer(expert, task)
            if d["unit"] == "taps":
                ts = expert.tt.tensors(task)
                self._scores = [ts[f"{n}.score"] for n in gated_layers(expert.net)]
                self._sizes = torch.tensor(list(layer_sizes(expert.net).values()))
            return
        if self._mode == "head":
            self._params = expert.tt.parameters(task)
        else:
            self._params = expert.tt.shared_parameters() + expert.tt.parameters(task)
        if self._mode == "transfer" and expert.layout != "expert":
            self._kd_groups = kd_groups(self.teacher.tt, [p for p in self.teacher.tasks if p != task])
        self.optimizer = make_optimizer(self._params, self.cfg)

    def _unit_optimizer(self, expert: Expert, task: str) -> torch.optim.Optimizer:
        """The unit's parameters; TAPS deltas and scores are never weight-decayed (as in `methods/taps/learner.py`)."""
        decayed, undecayed = [], []
        for n, t in expert.tt.tensors(task).items():
            if expert.tt.is_param(n) and t.requires_grad:
                (undecayed if is_taps_slot(n) else decayed).append(t)
        groups = [g for g in ({"params": decayed, "weight_decay": self.cfg.weight_decay},
                              {"params": undecayed, "weight_decay": 0.0}) if g["params"]]
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.cfg.lr)
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum)

    @property
    def epoch(self) -> int:
        """The 0-based epoch of the current task's next batch (samples observed // training-set size)."""
        return self._seen // self._epoch_size

    def set_epoch(self, epoch: int) -> None:
        """For drivers other than the runner: declare that epoch `epoch` starts now (TAPS units' warm-up)."""
        self._seen = epoch * self._epoch_size

    def unit_penalty(self) -> torch.Tensor:
        """unit=taps: lambda·R(s) of the current task's scores (`taskshare.methods.blocks.gating.penalty`)."""
        o = self.options
        return penalty(torch.stack(self._scores), self._sizes, o.taps_lambda, o.taps_penalty)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        expert = self.expert_of(self.current)
        mode = self._mode
        net = expert.net
        o = self.options
        with self.autocast():
            if mode == "head":
                train_mode(net, False)
                with torch.no_grad():
                    features = net.features(x)
            else:  # a unit's BN statistics are its own: train mode
                train_mode(net, mode in (None, "unit") or o.bn != "frozen")
                features = net.features(x)
            loss = F.cross_entropy(net.head(features).float(), y)
            if mode == "transfer" and o.kd_weight > 0:
                loss = loss + o.kd_weight * self.distill_loss(x, features)
        if self._scores and o.taps_lambda > 0 and self.epoch >= o.taps_warmup_epochs:
            loss = loss + self.unit_penalty()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad > 0:
            nn.utils.clip_grad_norm_(self._params, o.clip_grad)
        self.optimizer.step()
        self._seen += len(y)
        return loss.detach()

    def distill_loss(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Sum over the reused expert's earlier tasks of KD(head_p(student), head_p(teacher))."""
        teacher, student = self.teacher, self.expert_of(self.current)
        if student.layout != "expert":
            return self._distill_per_task(x)
        o = self.options
        old = [p for p in teacher.tasks if p != self.current]
        loss = features.new_zeros((), dtype=torch.float32)
        shared_features = None
        with torch.no_grad():
            train_mode(teacher.net, False)
            if o.bn != "task":  # one set of statistics: one teacher pass
                shared_features = teacher.net.features(x)
        for p in old:
            if shared_features is None:
                with torch.no_grad(), teacher.tt.use(p):
                    t_features = teacher.net.features(x)
            else:
                t_features = shared_features
            head = {k: v.detach() for k, v in student.tt.tensors(p).items() if k in HEAD_SLOTS}
            t_logits = head_logits(t_features, teacher.tt.tensors(p)).float()
            loss = loss + kd_loss(head_logits(features, head).float(), t_logits, o.kd_temperature, o.kd_smoothing)
        return loss

    def _distill_per_task(self, x: torch.Tensor) -> torch.Tensor:
        """KD on an expert carrying units: each earlier task p's features come from its own tensors (BN,
        unit), in the student and in the teacher, both in eval mode (p's statistics are never updated), so
        the KD target is exactly what p is evaluated with. Tasks with equal tensors share one pass."""
        teacher, student = self.teacher, self.expert_of(self.current)
        o = self.options
        loss = x.new_zeros((), dtype=torch.float32)
        training = student.net.training
        train_mode(teacher.net, False)
        train_mode(student.net, False)
        try:
            for rep, members in self._kd_groups:
                with torch.no_grad(), teacher.tt.use(rep):
                    t_features = teacher.net.features(x)
                with student.tt.use(rep):  # p's tensors are frozen: the gradient reaches the expert's weights
                    features = student.net.features(x)
                for p in members:
                    head = {k: v.detach() for k, v in student.tt.tensors(p).items() if k in HEAD_SLOTS}
                    t_logits = head_logits(t_features, teacher.tt.tensors(p)).float()
                    loss = loss + kd_loss(head_logits(features, head).float(), t_logits, o.kd_temperature,
                                          o.kd_smoothing)
        finally:
            train_mode(student.net, training)
        return loss

    def end_task(self, task) -> None:
        expert = self.expert_of(task.name)
        d = self.decision(task.name)
        if self._mode == "unit" and self.current == task.name:
            for p in expert.tt.parameters(task.name):  # finished: frozen (and gated layers take their fixed path)
                p.requires_grad_(False)
            for p in expert.tt.shared_parameters():
                p.requires_grad_(True)
        added = self.tt.count(task.name)
        d["added_params"], d["added_buffers"] = added["params"], added["buffers"]
        if d.get("unit") == "taps":
            d["taps_active"] = len(active_layers(expert.tt, task.name))
            d["taps_layers"] = len(gated_layers(expert.net))
        self._scores, self._kd_groups = [], []
        if self.options.extractor == "expert" and self._extractor is None:
            f, y, _ = self._split_features(task, self._expert_fn(expert, task.name))
            self.expert_prototypes[task.name] = prototypes(f, y, task.num_classes)
        self.teacher = None
        self.optimizer = None
        for p in self._params:  # no stale gradients left on a finished task's tensors
            p.grad = None
        self._params = []
        train_mode(expert.net, False)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        expert = self.expert_of(task)
        train_mode(expert.net, False)
        with expert.tt.use(task), self.autocast():
            return expert.net(x).float()

    def count(self, task: str) -> dict[str, int]:
        """Parameters and buffers `task` added (the runner reads the same through ``tt.count``)."""
        return self.tt.count(task)

    # ------------------------------------------------------------------------------------ checkpoints
    @staticmethod
    def _expert_state(e: Expert) -> dict[str, Any]:
        return {"genotype": e.genotype.to_dict(), "in_channels": e.in_channels, "tasks": list(e.tasks),
                "max_train": e.max_train, "layout": e.layout, "tt": e.tt.state()}

    def _restore_expert(self, state: dict[str, Any], existing: Expert | None) -> Expert:
        genotype = Genotype.from_dict(state["genotype"])
        layout = state.get("layout", "expert")
        if (existing is None or existing.genotype != genotype or existing.in_channels != state["in_channels"]
                or existing.layout != layout):
            net, tt = self._build(genotype, int(state["in_channels"]), 0, layout)
            existing = Expert(genotype, int(state["in_channels"]), net, tt, [], 0, layout)
        existing.tt.load_state(state["tt"])  # in place when the tasks already exist
        existing.tasks, existing.max_train = list(state["tasks"]), int(state["max_train"])
        return existing

    def extra_results(self) -> dict[str, Any]:
        """Per-task `decisions`, and the searches' wall times under `timing` (they vary run to run)."""
        return {"decisions": [dict(d) for d in self.decisions],
                "timing": {"par_search_s": dict(self.search_seconds)}}

    def state_dict(self) -> dict[str, Any]:
        return {"experts": [self._expert_state(e) for e in self.experts],
                "task_expert": dict(self.task_expert),
                "prototypes": dict(self.prototypes), "expert_prototypes": dict(self.expert_prototypes),
                "decisions": [dict(d) for d in self.decisions], "current": self.current,
                "teacher": None if self.teacher is None else self._expert_state(self.teacher),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "extractor_name": self.extractor_name, "seen": self._seen,
                "search_seconds": dict(self.search_seconds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old = self.experts
        self.experts = [self._restore_expert(s, old[i] if i < len(old) else None)
                        for i, s in enumerate(state["experts"])]
        self.task_expert = {k: int(v) for k, v in state["task_expert"].items()}
        self.prototypes = dict(state["prototypes"])
        self.expert_prototypes = dict(state["expert_prototypes"])
        self.decisions = [dict(d) for d in state["decisions"]]
        self.search_seconds = {k: float(v) for k, v in state.get("search_seconds", {}).items()}
        self.current = state["current"]
        self._seen = int(state.get("seen", 0))
        if state["extractor_name"] is not None and self.extractor_name is None:
            self.extractor_name = state["extractor_name"]
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = self._restore_expert(state["teacher"], None)
            self.teacher.net.requires_grad_(False).eval()
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    # --------------------------------------------------------------------------------------- artifacts
    def save_artifact(self, task: str, path: str | Path) -> int:
        """Write `task`'s artifact (safetensors + JSON); returns the bytes written. It holds what the task added
        (`PARTensors.tensors`: the whole expert for its owner, else the head and the task's own BN statistics
        or unit), the task's prototypes, and in the metadata the expert's genotype, layout and size options
        and the task's decision. An owner's artifact stands alone; the others' base is their expert,
        identified by its fingerprint. Load with `load_artifact`."""
        expert = self.expert_of(task)
        role = self.role(task)
        tensors = dict(self.tt.tensors(task))
        params = {n for n in tensors if self.tt.is_param(n)}
        for key, store in ((PROTOTYPES, self.prototypes), (EXPERT_PROTOTYPES, self.expert_prototypes)):
            if task in store:
                tensors[key] = store[task]
        fingerprint = self.tt.fingerprint() if role == "owner" else expert.tt.fingerprint()
        o = self.options
        info = {"role": role, "owner": expert.owner, "layout": expert.layout, "genotype": expert.genotype.to_dict(),
                "in_channels": expert.in_channels, "channels": o.channels, "cells": o.cells,
                "stem_multiplier": o.stem_multiplier, "bn": o.bn, "extractor": self.extractor_name,
                "decision": dict(self.decision(task))}
        return save_task(ArtifactView(task, tensors, fingerprint, params), task, path,
                         meta={"method": self.name, "par": info})

    def load_artifact(self, path: str | Path) -> str:
        """Add the task saved by `save_artifact` at `path` to this learner; returns its name.

        An owner's artifact rebuilds its expert (the learner needs the same ``channels``, ``cells``,
        ``stem_multiplier`` and ``bn``); any other task's needs its expert's owner (and the task it started
        from) loaded first, with the same expert tensors (fingerprint). Predictions then equal the saved
        learner's exactly. Every mismatch is a one-line ArtifactError.
        """
        st_path, _ = artifact_paths(path)
        side, tensors = read_artifact(path)  # the two files agree, checksum included
        meta, expected = side["meta"], side["tensors"]
        info = meta.get("par")
        if side["method"] != self.name or not isinstance(info, dict):
            raise ArtifactError(f"{st_path.name} is not a PAR task artifact (method {side['method']!r}): "
                                "load it with the method that saved it")
        name, o = side["task"], self.options
        if name in self.task_expert:
            raise ArtifactError(f"task {name!r} is already in this PAR learner: load each artifact once")
        theirs = {k: info[k] for k in ("channels", "cells", "stem_multiplier", "bn")}
        ours = {k: getattr(o, k) for k in theirs}
        if theirs != ours or int(info["in_channels"]) != int(self.input_shape[0]):
            show = ", ".join(f"{k}={v}" for k, v in theirs.items())
            raise ArtifactError(f"{st_path.name} was saved by a PAR learner with {show} on {info['in_channels']}-"
                                f"channel inputs, this one has {', '.join(f'{k}={v}' for k, v in ours.items())} "
                                f"on {self.input_shape[0]}: build it with the same par options")
        protos, expert_protos = tensors.pop(PROTOTYPES, None), tensors.pop(EXPERT_PROTOTYPES, None)
        trainable = [n for n, e in expected.items() if e.get("trainable")]
        decision, layout = dict(info["decision"]), info["layout"]
        if info["role"] == "owner":
            genotype = Genotype.from_dict(info["genotype"])
            net, tt = self._build(genotype, int(info["in_channels"]), 0, layout)
            shared = tt.shared_named_tensors()
            slots = [n for n in tt.slots if not is_taps_slot(n)]
            ref = {**tt.base_tensors(), **shared}
            bad = sorted(set(tensors) ^ (set(shared) | set(slots)))
            if not bad:
                bad = [n for n in tensors if n not in HEAD_SLOTS and tensors[n].shape != ref[n].shape]
            if bad:
                raise ArtifactError(f"{st_path.name} does not fit this PAR learner's expert (tensor {bad[0]!r}): "
                                    "it was saved with other par options")
            with torch.no_grad():
                for n, t in shared.items():
                    t.copy_(tensors[n])
            init = {n: tensors[n] for n in slots}
            init.update({n: torch.zeros_like(t) for n, t in tt.base_tensors().items() if leaf(n) == "score"})
            tt.add_task(name, init, trainable=[n for n in trainable if n in slots])
            self.experts.append(Expert(genotype, int(info["in_channels"]), net, tt, [name],
                                       int(decision.get("n_train", 0)), layout))
            index = len(self.experts) - 1
        else:
            owner = info["owner"]
            if owner not in self.task_expert:
                raise ArtifactError(f"{st_path.name} holds task {name!r} on the expert of task {owner!r}: "
                                    f"load {owner!r}'s artifact first")
            index = self.task_expert[owner]
            expert = self.experts[index]
            if layout not in LAYOUTS:
                raise ArtifactError(f"{st_path.name} has an unknown expert layout {layout!r}")
            self._convert(expert, layout)
            fp = expert.tt.fingerprint()
            if fp != side["base_fingerprint"]:
                raise ArtifactError(f"{st_path.name} was saved on a different expert of {owner!r} (fingerprint "
                                    f"{side['base_fingerprint'][:12]} != {fp[:12]}): load it next to the "
                                    f"artifact of {owner!r} it was saved with")
            source = decision.get("reuse_from") or decision.get("unit_from") or owner
            if source not in expert.tt:
                raise ArtifactError(f"{st_path.name}: task {name!r} starts from task {source!r}'s tensors: "
                                    f"load {source!r}'s artifact first")
            ref = expert.tt.tensors(source)
            bad = [n for n in tensors if n not in ref or (n not in HEAD_SLOTS and tensors[n].shape != ref[n].shape)]
            if bad:
                raise ArtifactError(f"{st_path.name} does not fit the expert of {owner!r} (tensor {bad[0]!r}): "
                                    "it was saved with other par options")
            expert.tt.add_task(name, tensors, copy_from=source, trainable=trainable)
            expert.tasks.append(name)
            if info["role"] == "reuse":
                expert.max_train = max(expert.max_train, int(decision.get("n_train", 0)))
        self.task_expert[name] = index
        decision["expert"] = index
        self.decisions.append(decision)
        if protos is not None:
            self.prototypes[name] = protos.to(self.device)
        if expert_protos is not None:
            self.expert_prototypes[name] = expert_protos.to(self.device)
        if self.extractor_name is None and self._extractor is None:
            self.extractor_name = info.get("extractor")
        return name
