"""PAR (Wang et al., CVPR 2023): relatedness, routing, MdeNAS cell search, cell experts and the `par` learner."""
from taskshare.methods.par.expert import ExpertNet, Genotype
from taskshare.methods.par.learner import PAR, Options, kd_loss
from taskshare.methods.par.relatedness import (divergence, make_extractor, relatedness_matrix, relatedness_report,
                                               similarity, task_relatedness)
from taskshare.methods.par.routing import expert_scores, route
from taskshare.methods.par.search import derive_genotype, search, update

__all__ = ["PAR", "Options", "kd_loss", "ExpertNet", "Genotype", "divergence", "similarity", "task_relatedness",
           "relatedness_matrix", "relatedness_report", "make_extractor", "expert_scores", "route", "search",
           "update", "derive_genotype"]
