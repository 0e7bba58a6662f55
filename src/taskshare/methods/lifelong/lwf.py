"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017, arXiv 1606.09282).

Before task t a frozen copy of the network (the teacher) is taken. On each batch of the new task the
loss is

    L = CE(head_t(f(x)), y) + alpha * sum_{j < t} KD_T( head_j(f(x)), teacher_head_j(f_teacher(x)) ),

    KD_T(z, z') = - sum_c softmax(z'/T)_c * log softmax(z/T)_c        (T = 2, alpha = lambda_o = 1)

as the paper's "modified cross-entropy". As in the paper, the old heads theta_o are optimised together
with the shared and new parameters (`train_old_heads`, default true). The paper's optional warm-up that
first trains the new head alone is `warmup_epochs` (default 0).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from taskshare.methods.blocks.distillation import distillation
from taskshare.methods.base import SharedBackboneLearner
from taskshare.models import head_logits


@dataclass
class Options:
    alpha: float = 1.0            # weight of the distillation term (lambda_o in the paper)
    temperature: float = 2.0
    train_old_heads: bool = True  # optimise the old heads too, as in the paper

    def __post_init__(self):
        if self.temperature <= 0 or self.alpha < 0:
            raise ValueError("temperature must be > 0 and alpha >= 0")


class LwF(SharedBackboneLearner):
    name = "lwf"
    description = "learning without forgetting: distil the old heads' outputs on new data"
    Options = Options

    def __init__(self, cfg, options, input_shape):
        super().__init__(cfg, options, input_shape)
        self.teacher = None
        self.teacher_heads: dict[str, dict[str, torch.Tensor]] = {}

    def old_tasks(self) -> list[str]:
        return [t for t in self.tt.tasks if t != self.current]

    def begin_task(self, task, index):
        old = list(self.tt.tasks)
        self.teacher = copy.deepcopy(self.net.backbone).eval().requires_grad_(False) if old else None
        self.teacher_heads = {t: {k: v.detach().clone() for k, v in self.tt.tensors(t).items()} for t in old}
        super().begin_task(task, index)

    def trainable_parameters(self):
        params = super().trainable_parameters()
        if self.options.train_old_heads:
            for t in self.old_tasks():
                params += self.tt.parameters(t)
        return params

    def regularizer(self, x, features):
        if self.teacher is None or self.options.alpha == 0:
            return None
        with torch.no_grad():
            teacher_features = self.teacher(x)
        loss = 0.0
        for t, head in self.teacher_heads.items():
            student = head_logits(features, self.tt.tensors(t)).float()
            teacher = head_logits(teacher_features, head).float()
            loss = loss + distillation(student, teacher, self.options.temperature)
        return self.options.alpha * loss

    def extra_state(self):
        return {"teacher": None if self.teacher is None else dict(self.teacher.state_dict()),
                "teacher_heads": self.teacher_heads}

    def load_extra_state(self, state):
        self.teacher_heads = {t: dict(h) for t, h in state["teacher_heads"].items()}
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = copy.deepcopy(self.net.backbone).eval().requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
