"""Per-task model selection as in PAR's official training loops: best-validation checkpoint, early stopping,
and the few-sample weight-decay rule (WenjinW/PAR@5539e08, ``src/approaches/par_v2.py``).

- **Best-validation checkpoint** (``best_val``; official ``train``/``reuse``/``transfer``): after every
  epoch the task's validation accuracy is measured; when it is strictly higher than the best so far
  (which starts at 0, with the state from before training), the state is kept. At the end of the task
  the kept state is restored. The official code keeps the whole model's ``state_dict``; taskshare keeps
  the task's expert (its `TaskTensors` state: shared weights, every task's tensors and BN statistics),
  which is everything the task can change. A task without validation samples is not selected.
- **Early stopping** (``early_stop_patience``; official ``--lr_patience``, 20): a counter grows by one per
  epoch and returns to 0 at every validation gain; training stops when it reaches the patience. As in the
  official code it applies to a new expert's training (``train()``) only, not to reuse or transfer (whose
  loops never increment the counter), and the official code stops only under its cosine schedule
  (taskshare has no per-phase schedule: it always stops). The driver still runs the remaining epochs:
  `PAR.observe` then returns without a step (the batches are read, no model is computed).
- **BatchNorm recalibration** (``bn_recalibrate``, beyond the paper; on in the ``paper`` preset): at the end
  of a new expert's training its BN running statistics are recomputed as the equal-weight average of the
  batch statistics over its training set (train-mode forward passes without gradient, momentum None, in
  batches of the run's ``batch_size``, as patches and TAPS re-estimate theirs), with the final weights.
  After a short
  training the running averages (momentum 0.1, from mean 0 / variance 1, of weights that kept changing)
  are far from the final network's statistics: on domain-stream's MNIST after 16 steps the expert scored
  0.13 in eval mode against 0.26-0.32 with batch statistics. Reuse and units are not recalibrated (their
  statistics are frozen or another task's).
- **Weight decay for few samples** (``few_shot_wd_max``, ``few_shot_wd_factor``): the official
  ``_get_optimizer(few_data=len(train_data) <= 25)`` multiplies the weight decay by 10 when the task has
  at most 25 training samples *in all* (not per class), for a new expert and for transfer, not for
  head-only reuse (its call passes no flag). taskshare multiplies the run's ``weight_decay``, so with the
  default 0 the rule changes nothing (the official scripts use 0.003 / 0.03). Units (beyond the paper) keep
  the run's weight decay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Selection", "few_shot_weight_decay", "recalibrate_bn", "val_accuracy"]


def _clone(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    return tree


@dataclass
class Selection:
    """The selection state of the current task (kept in PAR's checkpoints)."""

    patience: int = 0                  # 0: no early stopping for this task
    best_acc: float = 0.0              # the official best_acc starts at 0
    best_epoch: int = -1               # -1: the state from before training
    stale: int = 0                     # epochs since the last gain (the official `count`)
    stopped_epoch: int | None = None   # the last epoch trained before early stopping
    state: dict | None = None          # the expert's TaskTensors state at best_epoch

    def keep(self, state: dict) -> None:
        self.state = _clone(state)

    def end_epoch(self, epoch: int, acc: float, state: dict) -> bool:
        """Record epoch `epoch`'s validation accuracy; True when training should stop now."""
        self.stale += 1
        if acc > self.best_acc:
            self.best_acc, self.best_epoch, self.stale = acc, epoch, 0
            self.keep(state)
        if self.patience and self.stopped_epoch is None and self.stale >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def to_state(self) -> dict[str, Any]:
        return {"patience": self.patience, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "stale": self.stale, "stopped_epoch": -1 if self.stopped_epoch is None else self.stopped_epoch,
                "state": self.state}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "Selection":
        stopped = int(s["stopped_epoch"])
        return cls(int(s["patience"]), float(s["best_acc"]), int(s["best_epoch"]), int(s["stale"]),
                   None if stopped < 0 else stopped, s["state"])

    def summary(self) -> dict[str, Any]:
        """What the task's decision records."""
        return {"best_val_epoch": self.best_epoch, "best_val_acc": round(self.best_acc, 6),
                "stopped_epoch": self.stopped_epoch}


@torch.no_grad()
def val_accuracy(predict, dataset, task: str, batch_size: int, device) -> float:
    """Accuracy of `predict(x, task)` on `dataset` (batches of `batch_size`)."""
    x, y = dataset.to_tensors()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = predict(x[start:start + batch_size].to(device), task)
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / max(len(y), 1)


def few_shot_weight_decay(weight_decay: float, n_train: int, mode: str | None, max_n: int, factor: float) -> float:
    """The official rule: x factor when the task has <= max_n training samples (new expert or transfer)."""
    if max_n > 0 and n_train <= max_n and mode in (None, "transfer"):
        return weight_decay * factor
    return weight_decay


@torch.no_grad()
def recalibrate_bn(net: torch.nn.Module, forward, dataset, batch_size: int, device) -> None:
    """Recompute every BatchNorm's running statistics of `net` as the average over `dataset` (train mode)."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(dataset) < 2:
        return
    momenta = [m.momentum for m in bns]
    training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    net.train()
    x, _ = dataset.to_tensors()
    try:
        for start in range(0, len(x) - 1, batch_size):  # a last batch of one sample would fail in train mode
            forward(x[start:start + batch_size].to(device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        net.train(training)
