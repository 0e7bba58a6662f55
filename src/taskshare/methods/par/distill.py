"""PAR's transfer regularizer: LwF-style distillation on the reused expert's earlier heads (package docstring,
point 3; the official ``transfer_criterion``), for a plain expert and for an expert carrying units."""
from __future__ import annotations

import torch

from taskshare.methods.base import train_mode
from taskshare.methods.blocks.distillation import kd_loss
from taskshare.models import HEAD_SLOTS, head_logits

__all__ = ["distill_loss", "distill_per_task"]


def distill_loss(par, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Sum over the reused expert's earlier tasks of KD(head_p(student), head_p(teacher))."""
    teacher, student = par.teacher, par.expert_of(par.current)
    if student.layout != "expert":
        return distill_per_task(par, x)
    o = par.options
    old = [p for p in teacher.tasks if p != par.current]
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

def distill_per_task(par, x: torch.Tensor) -> torch.Tensor:
    """KD on an expert carrying units: each earlier task p's features come from its own tensors (BN,
    unit), in the student and in the teacher, both in eval mode (p's statistics are never updated), so
    the KD target is exactly what p is evaluated with. Tasks with equal tensors share one pass."""
    teacher, student = par.teacher, par.expert_of(par.current)
    o = par.options
    loss = x.new_zeros((), dtype=torch.float32)
    training = student.net.training
    train_mode(teacher.net, False)
    train_mode(student.net, False)
    try:
        for rep, members in par._kd_groups:
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
