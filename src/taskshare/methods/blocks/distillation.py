"""Knowledge distillation (Hinton et al. 2015), the building block of LwF and of PAR's regularized reuse
(`kd_loss`: the official PAR code's variant with an optional eps-smoothed student)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation", "kd_loss"]


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft cross-entropy between temperature-softened teacher and student, mean over the batch."""
    target = F.softmax(teacher / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(1).mean()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
            smoothing: float = 0.0) -> torch.Tensor:
    """Soft cross-entropy of softmax(teacher/T) against the (eps-smoothed) softmax(student/T), batch mean."""
    if smoothing == 0:
        return distillation(student, teacher, temperature)
    target = F.softmax(teacher / temperature, dim=1)
    p = (F.softmax(student / temperature, dim=1) + smoothing / student.shape[1]) / (1 + smoothing)
    return -(target * p.log()).sum(1).mean()
