"""The `par` learner: routing each task to reuse, a unit or a new expert, training it, its checkpoints.

The paper, its equations, the official code's departures and every choice are in the package docstring
(`taskshare.methods.par`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taskshare.core import TaskTensors
from taskshare.core.artifacts import content_sha256
from taskshare.data.datasets import stratified_order
from taskshare.errors import ConfigError, TaskshareError
from taskshare.methods.base import Learner, make_optimizer, task_seed, train_mode
from taskshare.methods.par.artifacts import load_artifact, save_artifact
from taskshare.methods.par.config import Options
from taskshare.methods.par.distill import distill_loss
from taskshare.methods.par.expert import Expert, ExpertNet, Genotype, build_expert
from taskshare.methods.par.manifest import write_manifest
from taskshare.methods.par.relatedness import (Extractor, extract_features, make_extractor, prototypes,
                                               task_relatedness)
from taskshare.methods.par.routing import expert_scores, route
from taskshare.methods.par.search import search, search_budget
from taskshare.methods.par.selection import Selection, few_shot_weight_decay, recalibrate_bn, val_accuracy
from taskshare.methods.par.tensors import PARTensors
from taskshare.methods.par.units import (LAYOUTS, UNIT_KINDS, convert, gate, is_taps_slot, kd_groups, layout_slots,
                                         leaf, unit_trainable)
from taskshare.methods.blocks.gating import SCORE_INIT, active_layers, gated_layers, layer_sizes, penalty
from taskshare.models import HEAD_SLOTS, new_head

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
        self._task = None                          # the current task (its validation split: `selection.py`)
        self._sel: Selection | None = None         # best_val / early_stop_patience state of the current task
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
        self._task = task
        if task.name in self.task_expert:  # restored from a checkpoint in the middle of this task
            self._start(task.name)
            return
        self._seen = 0
        o = self.options
        n_train = len(task.train)
        self.prototypes.pop(task.name, None)  # left by a begin_task interrupted before its decision (Ctrl-C)
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
            self._reuse(task, index, closest, rel, record)
        elif o.unit in UNIT_KINDS and closest is not None:  # beyond the paper: a unit on the closest expert
            self._add_unit(task, index, closest, record)
        else:
            self._allocate(task, index, action, closest, record)
        record["expert"] = self.task_expert[task.name]
        record["genotype"] = self.experts[record["expert"]].genotype.to_dict()
        self.decisions.append(record)
        self._start(task.name)

    def _reuse(self, task, index: int, closest: int, rel: dict[str, float], record: dict[str, Any]) -> None:
        """Regularized reuse of expert `closest`: the head alone (few samples) or head and expert with
        distillation from a frozen copy (the teacher)."""
        o, n_train = self.options, len(task.train)
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

    def _add_unit(self, task, index: int, closest: int, record: dict[str, Any]) -> None:
        """A patch or TAPS unit (with a head) on expert `closest` instead of a new expert."""
        o = self.options
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

    def _allocate(self, task, index: int, action: str, closest: int | None, record: dict[str, Any]) -> None:
        """A new expert: the closest expert's genotype (``allocate``) or a searched one (``allocate-search``)."""
        o = self.options
        record["unit"] = "expert"
        if action == "allocate":
            genotype = self.experts[closest].genotype
            record["genotype_from"] = self.experts[closest].owner
        else:
            x, y = task.train.to_tensors()
            epochs, limit = search_budget(o.search_epochs, o.search_limit, self.cfg.epochs, len(y))
            if limit and len(y) > limit:
                keep = stratified_order(y, task_seed(self.cfg.seed, index, salt=14))[:limit]
                x, y = x[keep], y[keep]
            result = search(x, y, task.num_classes, epochs=epochs,
                            seed=task_seed(self.cfg.seed, index, salt=13), channels=o.channels,
                            n_cells=o.cells, steps=o.steps, batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                            momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay,
                            lr_p=o.search_lr_p, device=self.device, desc=f"PAR search, task {task.name}")
            genotype = result.genotype
            self.search_seconds[task.name] = round(result.seconds, 3)
            record["search_acc"], record["search_epochs"], record["search_n"] = result.accuracies, epochs, len(y)
        in_channels = int(task.input_shape[0])
        net, tt = self._build(genotype, in_channels, task_seed(self.cfg.seed, index, salt=11))
        tt.add_task(task.name, self._head(net.feature_dim, task.num_classes, index))
        self.experts.append(Expert(genotype, in_channels, net, tt, [task.name], len(task.train)))
        self.task_expert[task.name] = len(self.experts) - 1

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
            self._select(expert)
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
        o = self.options
        wd = few_shot_weight_decay(self.cfg.weight_decay, d["n_train"], self._mode, o.few_shot_wd_max,
                                   o.few_shot_wd_factor)
        self.optimizer = make_optimizer(self._params, dataclasses.replace(self.cfg, weight_decay=wd))
        self._select(expert)

    def _select(self, expert: Expert) -> None:
        """best_val / early stopping (`selection.py`): start from the state before training (official)."""
        o = self.options
        self._sel = None
        if (o.best_val or o.early_stop_patience) and self._task is not None and len(self._task.val):
            self._sel = Selection(patience=o.early_stop_patience if self._mode is None else 0)
            self._sel.keep(expert.tt.state())

    def _unit_optimizer(self, expert: Expert, task: str) -> torch.optim.Optimizer:
        """The unit's parameters; TAPS deltas and scores are never weight-decayed (as in `methods/taps/learner.py`)."""
        decayed, undecayed = [], []
        for n, t in expert.tt.tensors(task).items():
            if expert.tt.is_param(n) and t.requires_grad:
                (undecayed if is_taps_slot(n) else decayed).append(t)
        return make_optimizer([*decayed, *undecayed], self.cfg, no_decay=undecayed)

    @property
    def epoch(self) -> int:
        """The 0-based epoch of the current task's next batch (samples observed // training-set size)."""
        return self._seen // self._epoch_size

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """Nothing is shared by every task: each expert is its owner's artifact (the base is empty)."""
        return {}

    def base_fingerprint(self) -> str:
        return hashlib.sha256(b"slots:").hexdigest()  # as TaskTensors over an empty shared part

    def shared_parameter_count(self) -> int:
        return 0

    def tensors(self) -> list[torch.Tensor]:
        """Every expert's tensors (shared, base and its tasks'), expert by expert."""
        return [t for e in self.experts for t in e.tt.all_tensors()]

    def begin_epoch(self, epoch: int) -> None:
        """Epoch `epoch` starts now (TAPS units' warm-up; the driver says so)."""
        self._seen = epoch * self._epoch_size

    def end_epoch(self, epoch: int) -> None:
        """best_val / early stopping: the current task's validation accuracy after epoch `epoch`."""
        if self._sel is None or self._sel.stopped:
            return
        acc = val_accuracy(self.predict, self._task.val, self.current, self.cfg.eval_batch_size, self.device)
        self._sel.end_epoch(epoch, acc, self.expert_of(self.current).tt.state())

    def unit_penalty(self) -> torch.Tensor:
        """unit=taps: lambda·R(s) of the current task's scores (`taskshare.methods.blocks.gating.penalty`)."""
        o = self.options
        return penalty(torch.stack(self._scores), self._sizes, o.taps_lambda, o.taps_penalty)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._sel is not None and self._sel.stopped:  # early stopping: the driver's remaining batches
            self._seen += len(y)
            return torch.zeros(())
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
        """Sum over the reused expert's earlier tasks of KD(head_p(student), head_p(teacher)) (`distill.py`)."""
        return distill_loss(self, x, features)

    def end_task(self, task) -> None:
        expert = self.expert_of(task.name)
        d = self.decision(task.name)
        if self._mode == "unit" and self.current == task.name:
            for p in expert.tt.parameters(task.name):  # finished: frozen (and gated layers take their fixed path)
                p.requires_grad_(False)
            for p in expert.tt.shared_parameters():
                p.requires_grad_(True)
        if self._sel is not None:
            if self.options.best_val and self.current == task.name:
                expert.tt.load_state(self._sel.state)  # in place: every tensor back to the best epoch's value
            d.update(self._sel.summary())
            self._sel = None
        if self._mode is None and self.options.bn_recalibrate and self.current == task.name:
            with expert.tt.use(task.name):
                recalibrate_bn(expert.net, expert.net.features, task.train, self.cfg.batch_size, self.device)
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

    def prediction_key(self, task: str) -> str:
        """What `predict` reads: the task's expert (its shared tensors) and the task's slots on it."""
        tt = self.expert_of(task).tt
        return tt.fingerprint() + content_sha256(tt.tensors(task))

    def count(self, task: str) -> dict[str, int]:
        """Parameters and buffers `task` added (the runner reads the same through ``tt.count``)."""
        return self.tt.count(task)

    # ------------------------------------------------------------------------------------ checkpoints
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
        return {"experts": [e.state() for e in self.experts],
                "task_expert": dict(self.task_expert),
                "prototypes": dict(self.prototypes), "expert_prototypes": dict(self.expert_prototypes),
                "decisions": [dict(d) for d in self.decisions], "current": self.current,
                "teacher": None if self.teacher is None else self.teacher.state(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "extractor_name": self.extractor_name, "seen": self._seen,
                "search_seconds": dict(self.search_seconds),
                "selection": None if self._sel is None else self._sel.to_state()}

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
        if state.get("selection") is not None:
            self._sel = Selection.from_state(state["selection"])

    # --------------------------------------------------------------------------------------- artifacts
    save_artifact = save_artifact  # (par, task, path) -> bytes: see par/artifacts.py
    load_artifact = load_artifact  # (par, path) -> task name: see par/artifacts.py
    write_manifest = write_manifest  # (par, folder, tasks, preprocessing): what `PARModel.load` reads (manifest.py)
