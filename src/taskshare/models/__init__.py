"""Backbones in plain torch and the multi-head TaskNet."""
from taskshare.models.backbones import BACKBONES, MLP, LeNet, ResNet18, SmallCNN
from taskshare.models.mobilenetv2 import MobileNetV2, mobilenet_v2
from taskshare.models.tasknet import (ALL_BACKBONES, HEAD_SLOTS, PRETRAINED, TaskNet, build_backbone, head_logits,
                                     new_head, token_input)

__all__ = ["MobileNetV2", "mobilenet_v2", "ALL_BACKBONES", "PRETRAINED", "token_input", "BACKBONES", "MLP", "LeNet", "SmallCNN", "ResNet18", "TaskNet", "HEAD_SLOTS", "build_backbone",
           "head_logits", "new_head"]
