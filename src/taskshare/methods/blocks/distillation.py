"""Knowledge distillation (Hinton et al. 2015), the building block of LwF and of PAR's regularized reuse."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation"]


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft cross-entropy between temperature-softened teacher and student, mean over the batch."""
    target = F.softmax(teacher / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(1).mean()
