"""Backbones in plain torch and the multi-head TaskNet."""
from taskshare.models.backbones import BACKBONES, MLP, ResNet18, SmallCNN
from taskshare.models.tasknet import HEAD_SLOTS, TaskNet, build_backbone, head_logits, new_head

__all__ = ["BACKBONES", "MLP", "SmallCNN", "ResNet18", "TaskNet", "HEAD_SLOTS", "build_backbone",
           "head_logits", "new_head"]
