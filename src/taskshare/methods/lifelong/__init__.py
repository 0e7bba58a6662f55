"""Lifelong-learning baselines: one module each."""
from taskshare.methods.lifelong.ewc import EWC
from taskshare.methods.lifelong.expert_per_task import ExpertPerTask
from taskshare.methods.lifelong.finetune import Finetune
from taskshare.methods.lifelong.joint import Joint
from taskshare.methods.lifelong.lwf import LwF

__all__ = ["Finetune", "EWC", "LwF", "ExpertPerTask", "Joint"]
