"""PAR (Wang et al., CVPR 2023): relatedness, routing, MdeNAS cell search, cell experts and the `par` learner.

Beyond the paper, ``par.unit=patch`` / ``par.unit=taps`` allocate a scale-bias+head model patch or TAPS gated
deltas on the most related expert instead of a new expert (`units.py`, `learner.py`); ``expert`` (default)
is the paper's whole-expert allocation.
"""
from taskshare.methods.par.expert import ExpertNet, Genotype
from taskshare.methods.par.learner import PAR, Options, kd_loss
from taskshare.methods.par.relatedness import (divergence, make_extractor, relatedness_matrix, relatedness_report,
                                               similarity, task_relatedness)
from taskshare.methods.par.routing import expert_scores, route
from taskshare.methods.par.search import derive_genotype, search, update

__all__ = ["PAR", "Options", "kd_loss", "ExpertNet", "Genotype", "divergence", "similarity", "task_relatedness",
           "relatedness_matrix", "relatedness_report", "make_extractor", "expert_scores", "route", "search",
           "update", "derive_genotype"]
