"""Backbones in plain torch and the multi-head TaskNet."""
from taskshare.models.backbones import BACKBONES, MLP, LeNet, ResNet18, SmallCNN
from taskshare.models.tasknet import (ALL_BACKBONES, HEAD_SLOTS, PRETRAINED, TaskNet, build_backbone, head_logits,
                                     new_head, token_input)

__all__ = ["ALL_BACKBONES", "PRETRAINED", "token_input", "BACKBONES", "MLP", "LeNet", "SmallCNN", "ResNet18", "TaskNet", "HEAD_SLOTS", "build_backbone",
           "head_logits", "new_head"]
