"""TAPS options: sequential (`taps`), joint (`taps-joint`) and two-stage (`taps-two-stage`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from taskshare.errors import ConfigError
from taskshare.methods.blocks.gating import DEFAULT_LAYER_TYPES, LAYER_TYPES, LR_SCHEDULES, PENALTIES, SCORE_INIT, TAU

__all__ = ["TapsOptions", "TapsJointOptions", "TapsTwoStageOptions"]


def _check_common(o, section: str) -> None:
    if o.penalty not in PENALTIES:
        raise ConfigError(f"{section}.penalty={o.penalty!r} is unknown: choose one of {', '.join(PENALTIES)}")
    if not (math.isfinite(o.lambda_) and o.lambda_ >= 0):
        raise ConfigError(f"{section}.lambda must be >= 0, got {o.lambda_}")
    if not (math.isfinite(o.tau) and o.tau > 0):
        raise ConfigError(f"{section}.tau must be > 0 (the L1 penalty pulls scores to 0), got {o.tau}")
    if not math.isfinite(o.score_init):
        raise ConfigError(f"{section}.score_init must be a finite number, got {o.score_init}")
    if o.warmup_epochs is not None and o.warmup_epochs < 0:
        raise ConfigError(f"{section}.warmup_epochs must be >= 0, got {o.warmup_epochs}")
    if o.image_size < 8:
        raise ConfigError(f"{section}.image_size must be at least 8, got {o.image_size}")
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


OFFICIAL_WARMUP = (3, 31)  # the official recipe: epochs 0..2 unpenalised of the 31 its loop runs


def warmup_for(o, epochs: int) -> int:
    """The unpenalised epochs of a TAPS task: `warmup_epochs`, or (null) round(3/31 of the TAPS epochs)."""
    if o.warmup_epochs is not None:
        return o.warmup_epochs
    return round(epochs * OFFICIAL_WARMUP[0] / OFFICIAL_WARMUP[1])


@dataclass
class TapsOptions:
    """Sequential TAPS (``--set taps.<option>=...``; ``lambda`` sets ``lambda_``)."""

    lambda_: float = 1.0                 # λ (official default --lam 1; README CUB example 0.1)
    penalty: str = "official"            # official (Σ|s|/52) | size-weighted (Σ|W_i||s_i| / Σ|W_i|)
    tau: float = TAU                     # gate threshold, inclusive
    score_init: float = SCORE_INIT       # every gated layer's score for a new task (gate on: >= tau)
    warmup_epochs: int | None = None     # penalty off in epochs 0..warmup_epochs-1; null: the official share,
                                         # 3 of 31 epochs (--warmup_epochs 2 of --epochs 30), of the run's epochs
    layer_types: tuple[str, ...] = DEFAULT_LAYER_TYPES  # layer classes that get a gated delta
    backbone: str = "auto"               # auto | first-task | model (see the module docstring)
    bn_samples: int = 0                  # sequential taps: re-estimate the task's BN statistics at its end on
                                         # this many training samples (0: off, the running averages are kept)
    accumulate: int = 1                  # official-compat (sequential taps only): sum the gradients of the
                                         # batches, step after batch i of an epoch when i % accumulate == 0
                                         # (official 8); the leftover carries into the next epoch
    lr_schedule: str = "constant"        # constant | cosine (official-compat, sequential taps only: per-epoch
                                         # cosine over each task, last epoch at lr 0)
    image_size: int = 32                 # model=mobilenetv2 / mobilenetv2-random: the input side images are
                                         # resized to (what patches.image_size is for the patch methods)

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
