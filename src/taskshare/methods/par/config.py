"""PAR's options (``--set par.<option>=...``), with the official code's values noted beside the paper's."""
from __future__ import annotations

import math
from dataclasses import dataclass

from taskshare.methods.blocks.gating import PENALTIES
from taskshare.methods.par.routing import SCORES
from taskshare.methods.par.units import UNIT_KINDS

__all__ = ["BN_MODES", "EXPERT_PROTOTYPES", "EXTRACTORS", "Options", "PROTOTYPES", "UNITS"]

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
