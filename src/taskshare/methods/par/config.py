"""PAR's options (``--set par.<option>=...``), with the official code's values noted beside the paper's.

``preset`` picks a set of defaults at once: ``paper`` (taskshare's defaults, the fields' defaults below)
or ``official`` (every default of the official code WenjinW/PAR@5539e08 that is a PAR option, `OFFICIAL`).
An option given explicitly (``--set par.channels=16``, ``Options(channels=16)``) always overrides the preset.
The table of both presets is in the package docstring (`taskshare.methods.par`) and docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from taskshare.methods.blocks.gating import PENALTIES
from taskshare.methods.par.routing import SCORES
from taskshare.methods.par.units import UNIT_KINDS

__all__ = ["BN_MODES", "EXPERT_PROTOTYPES", "EXTRACTORS", "OFFICIAL", "Options", "PRESETS", "PROTOTYPES", "UNITS"]

BN_MODES = ("frozen", "task", "shared")
EXTRACTORS = ("auto", "mobilenetv2", "raw", "expert")
UNITS = ("expert",) + UNIT_KINDS
PROTOTYPES = "par.prototypes"                # extra tensors of an artifact (not module tensors)
EXPERT_PROTOTYPES = "par.expert_prototypes"
PRESETS = ("paper", "official")
# preset=official: the official code's value of every PAR option where it differs from taskshare's default
# (src/approaches/par_v2.py and the run scripts; the search length is CIFAR/MiniImageNet's, CTrL uses 50)
OFFICIAL: dict[str, Any] = {
    "few_shot_max": 25,            # strategy(): N_train <= 25 reuses an expert with >= 10 N
    "zero_is_unrelated": True,     # s = 0 -> s = 1
    "bn": "shared",                # transfer trains the expert's BN in train mode
    "channels": 64,                # --init_channel=64
    "search_epochs": 100,          # --sample_epochs=100 (fixed, not tied to the run's epochs)
    "best_val": True,              # train/reuse/transfer restore the best-validation state
    "early_stop_patience": 20,     # --lr_patience=20 (train() only, cosine schedule)
    "few_shot_wd_max": 25,         # _get_optimizer(few_data=len(train_data) <= 25): weight decay x10
    "bn_recalibrate": False,       # (beyond the paper) the official running statistics are the training's
}


@dataclass(init=False)
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
    search_epochs: int = -1           # MdeNAS samples (= supernet epochs); -1: tied to the run (search.py
                                      # `search_budget`); official 50 (CTrL) / 100
    search_lr_p: float = 0.01         # MdeNAS probability step (official lr_search)
    search_limit: int = 0             # cap on training samples used by the search (0: all)
    clip_grad: float = 10.0           # gradient-norm clipping in training (official 10; 0: off)
    unit: str = "expert"              # allocation unit: expert (paper) | patch | taps (beyond the paper)
    taps_lambda: float = 1.0          # unit=taps: lambda of the TAPS sparsity penalty (TAPS default 1)
    taps_penalty: str = "official"    # unit=taps: official (sum|s|/52) | size-weighted (see methods/taps/)
    taps_warmup_epochs: int = 0       # unit=taps: penalty off in the unit's first epochs
    score_units: bool = False         # units count in their expert's score S_e (default: owner + reusers only)
    bn_recalibrate: bool = True       # new expert: BN statistics recomputed on its training set at the end
                                      # (beyond the paper; official: off)
    best_val: bool = False            # end each task with the state of its best-validation epoch (official: on)
    early_stop_patience: int = 0      # new expert: stop after this many epochs without a validation gain
                                      # (official 20; 0: off)
    few_shot_wd_max: int = 0          # N_train <= this: weight decay x few_shot_wd_factor (official 25; 0: off)
    few_shot_wd_factor: float = 10.0  # (official 10; not for head-only reuse, as the official reuse())
    preset: str = "paper"             # paper (these defaults) | official (`OFFICIAL`); explicit options win

    def __init__(self, **values: Any):
        """Options from keyword arguments; those not given take the preset's value (`OFFICIAL` or the field's
        default). The names given are kept in ``explicit``."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown PAR option {unknown[0]!r}")
        preset = values.get("preset", "paper")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        base = OFFICIAL if preset == "official" else {}
        for f in fields(self):
            setattr(self, f.name, values[f.name] if f.name in values else base.get(f.name, f.default))
        self.explicit = frozenset(values)
        self.__post_init__()

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
        if self.search_epochs < -1:
            raise ValueError("search_epochs must be >= 0, or -1 (tied to the run's budget)")
        if min(self.search_limit, self.few_shot_max, self.extractor_image_size, self.early_stop_patience,
               self.few_shot_wd_max) < 0 or self.few_shot_wd_factor < 0:
            raise ValueError("search_limit, few_shot_max, extractor_image_size, early_stop_patience, "
                             "few_shot_wd_max and few_shot_wd_factor must be >= 0")
        if self.head_only_ratio < 0 or self.few_shot_ratio < 0 or self.clip_grad < 0:
            raise ValueError("head_only_ratio, few_shot_ratio and clip_grad must be >= 0")
