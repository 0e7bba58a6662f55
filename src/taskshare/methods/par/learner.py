"""PAR: task-difficulty-aware parameter allocation and regularization (Wang et al., CVPR 2023).

Task-incremental lifelong learning with a growing set of **experts** (cell networks, `expert.py`) and one
linear head per task. For each new task t (official code WenjinW/PAR@5539e08, ``src/approaches/par_v2.py``):

1. **Relatedness** (`relatedness.py`): features of t's validation split from a frozen extractor, the
   nearest-prototype divergence D(t||p) to every learned task p, s(t, p) = min(1 - exp(-2D), D); t's class
   prototypes are stored for later tasks.
2. **Routing** (`routing.py`): expert score S_e = mean of s over the expert's tasks, e* = argmin, and
   three tiers (0.5 / 0.75): reuse e*, allocate a new expert with e*'s genotype, allocate with search.
   Task 0 always searches. Every task's decision is appended to ``decisions`` (for results.json):
   ``{task, index, action, expert, closest, scores, relatedness, reuse, genotype_from, search_s, ...}``.
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

**Checkpoints**: `state_dict` holds every expert's genotype and TaskTensors state, the routing tables,
prototypes, decisions, the transfer teacher and the optimizer; `load_state_dict` rebuilds experts of other
architectures from their genotypes (in place when they already exist, so a live optimizer stays valid).
Every random draw (expert and head initialisation, search split/batches/samples) derives from
``task_seed(seed, task index, salt)``, so a resumed run repeats an interrupted search exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors
from taskshare.data.datasets import stratified_order
from taskshare.errors import ConfigError, TaskshareError
from taskshare.methods.base import Learner, make_optimizer, task_seed, train_mode
from taskshare.methods.lifelong.lwf import distillation
from taskshare.methods.par.expert import ExpertNet, Genotype, bn_buffer_names, build_expert
from taskshare.methods.par.relatedness import (Extractor, extract_features, make_extractor, prototypes,
                                               task_relatedness)
from taskshare.methods.par.routing import SCORES, expert_scores, route
from taskshare.methods.par.search import search
from taskshare.methods.par.tensors import PARTensors
from taskshare.models import HEAD_SLOTS, head_logits, new_head

BN_MODES = ("frozen", "task", "shared")
EXTRACTORS = ("auto", "mobilenetv2", "raw", "expert")
UNITS = ("expert",)


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
    unit: str = "expert"              # allocation unit (only whole experts so far)

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
            raise ValueError(f"unit must be one of {', '.join(UNITS)} (smaller allocation units are not built yet)")
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
    max_train: int

    @property
    def owner(self) -> str:
        return self.tasks[0]


class PAR(Learner):
    name = "par"
    description = "PAR: relatedness-routed reuse (LwF-regularized) or new searched experts per task"
    Options = Options

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
        self.current: str | None = None
        self._mode: str | None = None
        self.teacher: Expert | None = None
        self._params: list[nn.Parameter] = []
        self._extractor: Extractor | None = None
        self.extractor_name: str | None = None
        self.tt = PARTensors(self)

    # ------------------------------------------------------------------------------------------ helpers
    def expert_of(self, task: str) -> Expert:
        if task not in self.task_expert:
            known = ", ".join(self.task_expert) or "none yet"
            raise TaskshareError(f"unknown task {task!r}: PAR has learned {known}; pass the name of a trained task")
        return self.experts[self.task_expert[task]]

    def decision(self, task: str) -> dict[str, Any]:
        return next(d for d in self.decisions if d["task"] == task)

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

    def _slots(self, net: ExpertNet) -> list[str]:
        return list(HEAD_SLOTS) + (bn_buffer_names(net) if self.options.bn == "task" else [])

    def _build(self, genotype: Genotype, in_channels: int, seed: int) -> tuple[ExpertNet, TaskTensors]:
        o = self.options
        net = build_expert(genotype, in_channels, o.channels, o.cells, o.stem_multiplier, seed)
        net = net.to(self.device, memory_format=torch.channels_last)  # faster depthwise convolutions on CPU
        return net, TaskTensors(net, self._slots(net))

    def _head(self, feature_dim: int, num_classes: int, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(task_seed(self.cfg.seed, index, salt=12))
        return {k: v.to(self.device) for k, v in new_head(feature_dim, num_classes, gen).items()}

    def _clone(self, expert: Expert) -> Expert:
        """A frozen copy (the transfer teacher), rebuilt from the genotype and the tensors' state."""
        net, tt = self._build(expert.genotype, expert.in_channels, 0)
        tt.load_state(expert.tt.state())
        net.requires_grad_(False).eval()
        return Expert(expert.genotype, expert.in_channels, net, tt, list(expert.tasks), expert.max_train)

    # ----------------------------------------------------------------------------------- relatedness
    def _split_features(self, task, fn) -> tuple[torch.Tensor, torch.Tensor, str]:
        bs = self.cfg.eval_batch_size
        if len(task.val):
            f, y = extract_features(fn, task.val, bs, self.device)
            counts = torch.bincount(y)
            if int(counts[counts > 0].min()) >= 2:
                return f, y, "val"
            ft, yt = extract_features(fn, task.train, bs, self.device)
            return torch.cat([f, ft]), torch.cat([y, yt]), "train+val"
        f, y = extract_features(fn, task.train, bs, self.device)
        return f, y, "train"

    def _expert_fn(self, expert: Expert, task: str) -> Extractor:
        def fn(x: torch.Tensor) -> torch.Tensor:
            train_mode(expert.net, False)
            with expert.tt.use(task):
                return expert.net.features(x.contiguous(memory_format=torch.channels_last))
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
                key = p if o.bn == "task" else e  # tasks sharing BN statistics see the same features
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
        if task.name in self.task_expert:  # restored from a checkpoint in the middle of this task
            self._start(task.name)
            return
        o = self.options
        n_train = len(task.train)
        rel, div, split = self._relatedness(task)
        scores = expert_scores(rel, [e.tasks for e in self.experts], o.score)
        action, closest = route(scores, n_train=n_train, expert_max_train=[e.max_train for e in self.experts],
                                reuse_threshold=o.reuse_threshold, cell_threshold=o.cell_threshold,
                                few_shot_max=o.few_shot_max, few_shot_ratio=o.few_shot_ratio)
        record: dict[str, Any] = {
            "task": task.name, "index": index, "action": action, "expert": None, "closest": closest,
            "scores": scores, "relatedness": rel, "divergence": div, "n_train": n_train, "reuse": None,
            "genotype_from": None, "genotype": None, "search_s": None, "search_acc": None,
            "extractor": self.extractor_name, "relatedness_split": split}
        if action == "reuse":
            expert = self.experts[closest]
            head_only = n_train < o.head_only_ratio * expert.max_train
            record["reuse"] = "head" if head_only else "transfer"
            if not head_only:
                self.teacher = self._clone(expert)
            expert.tt.add_task(task.name, self._head(expert.net.feature_dim, task.num_classes, index),
                               copy_from=expert.owner)
            expert.tasks.append(task.name)
            expert.max_train = max(expert.max_train, n_train)
            self.task_expert[task.name] = closest
        else:
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
                                lr_p=o.search_lr_p, device=self.device)
                genotype = result.genotype
                record["search_s"] = round(result.seconds, 3)
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
        self._mode = self.decision(task)["reuse"]  # None (allocation) | "head" | "transfer"
        expert = self.expert_of(task)
        expert.tt.activate(task)
        if self._mode == "head":
            self._params = expert.tt.parameters(task)
        else:
            self._params = expert.tt.shared_parameters() + expert.tt.parameters(task)
        self.optimizer = make_optimizer(self._params, self.cfg)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        expert = self.expert_of(self.current)
        mode = self._mode
        net = expert.net
        with self.autocast():
            if mode == "head":
                train_mode(net, False)
                with torch.no_grad():
                    features = net.features(x)
            else:
                train_mode(net, mode is None or self.options.bn != "frozen")
                features = net.features(x)
            loss = F.cross_entropy(net.head(features).float(), y)
            if mode == "transfer" and self.options.kd_weight > 0:
                loss = loss + self.options.kd_weight * self.distill_loss(x, features)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.clip_grad > 0:
            nn.utils.clip_grad_norm_(self._params, self.options.clip_grad)
        self.optimizer.step()
        return loss.detach()

    def distill_loss(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Sum over the reused expert's earlier tasks of KD(head_p(student), head_p(teacher))."""
        teacher, student = self.teacher, self.expert_of(self.current)
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

    def end_task(self, task) -> None:
        if self.options.extractor == "expert" and self._extractor is None:
            expert = self.expert_of(task.name)
            f, y, _ = self._split_features(task, self._expert_fn(expert, task.name))
            self.expert_prototypes[task.name] = prototypes(f, y, task.num_classes)
        self.teacher = None
        self.optimizer = None
        for p in self._params:  # no stale gradients left on a finished task's tensors
            p.grad = None
        self._params = []
        train_mode(self.expert_of(task.name).net, False)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, task: str) -> torch.Tensor:
        expert = self.expert_of(task)
        train_mode(expert.net, False)
        with expert.tt.use(task), self.autocast():
            return expert.net(x.contiguous(memory_format=torch.channels_last)).float()

    def count(self, task: str) -> dict[str, int]:
        """Parameters and buffers `task` added (the runner reads the same through ``tt.count``)."""
        return self.tt.count(task)

    # ------------------------------------------------------------------------------------ checkpoints
    @staticmethod
    def _expert_state(e: Expert) -> dict[str, Any]:
        return {"genotype": e.genotype.to_dict(), "in_channels": e.in_channels, "tasks": list(e.tasks),
                "max_train": e.max_train, "tt": e.tt.state()}

    def _restore_expert(self, state: dict[str, Any], existing: Expert | None) -> Expert:
        genotype = Genotype.from_dict(state["genotype"])
        if existing is None or existing.genotype != genotype or existing.in_channels != state["in_channels"]:
            net, tt = self._build(genotype, int(state["in_channels"]), 0)
            existing = Expert(genotype, int(state["in_channels"]), net, tt, [], 0)
        existing.tt.load_state(state["tt"])  # in place when the tasks already exist
        existing.tasks, existing.max_train = list(state["tasks"]), int(state["max_train"])
        return existing

    def extra_results(self) -> dict[str, Any]:
        return {"decisions": [dict(d) for d in self.decisions]}

    def state_dict(self) -> dict[str, Any]:
        return {"experts": [self._expert_state(e) for e in self.experts],
                "task_expert": dict(self.task_expert),
                "prototypes": dict(self.prototypes), "expert_prototypes": dict(self.expert_prototypes),
                "decisions": [dict(d) for d in self.decisions], "current": self.current,
                "teacher": None if self.teacher is None else self._expert_state(self.teacher),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "extractor_name": self.extractor_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old = self.experts
        self.experts = [self._restore_expert(s, old[i] if i < len(old) else None)
                        for i, s in enumerate(state["experts"])]
        self.task_expert = {k: int(v) for k, v in state["task_expert"].items()}
        self.prototypes = dict(state["prototypes"])
        self.expert_prototypes = dict(state["expert_prototypes"])
        self.decisions = [dict(d) for d in state["decisions"]]
        self.current = state["current"]
        if state["extractor_name"] is not None and self.extractor_name is None:
            self.extractor_name = state["extractor_name"]
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = self._restore_expert(state["teacher"], None)
            self.teacher.net.requires_grad_(False).eval()
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
