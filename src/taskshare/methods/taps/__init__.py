"""TAPS: Task Adaptive Parameter Sharing (Wallingford et al., CVPR 2022, arXiv 2203.16708).

Every chosen layer i of a base network (Conv1d/2d/3d, Linear: convolutions, transformer attention
projections and MLPs) keeps its base weight W_i and gets, per task t, a dense delta ΔW_i^t (initialised to 0,
same shape as W_i) and one scalar score s_i^t (initialised to 0.15):

    W_i^t = W_i + I_τ(s_i^t) · ΔW_i^t,        I_τ(s) = 1[s >= τ],  τ = 0.1 (inclusive)     (paper, Approach)

    min over ΔW^t, s^t, norms^t, head^t:   L_t(W^t)  +  λ · R(s^t)                            (paper, Approach)

I_τ has no useful derivative, so the backward pass is straight-through (I_τ treated as the identity):
∂L/∂s_i = ⟨∂L/∂W_i^t, ΔW_i^t⟩ + λ ∂R/∂s_i, a first-order estimate of what switching the delta on changes.
An inactive layer (s_i < τ) gives ΔW_i exactly zero gradient, but s_i still gets ⟨∂L/∂W_i^t, ΔW_i⟩, so the
layer can switch back on. A layer with a bias gets a bias delta behind the same gate (the score's gradient
then also has the term ⟨∂L/∂b_i^t, Δb_i^t⟩); the official ResNets have bias-free convolutions, so this only
matters for Linear layers (transformers).

**Penalty R** (``penalty=``). The paper writes λ·Σ_i|s_i|; the official code (MattWallingford/TAPS@87e9188,
``train_sequential.py``) uses λ·Σ_i|s_i| / 52, the constant 52 hard-coded whatever the architecture.

- ``official`` (default): R = Σ_i |s_i| / 52, so λ values transfer from the official scripts. The paper's
  unnormalised λ_paper·Σ|s_i| is this mode with λ = 52·λ_paper.
- ``size-weighted``: R = Σ_i |W_i|·|s_i| / Σ_i |W_i| (|W_i|: elements of layer i's weight + bias), so a
  2.36M-weight layer costs more to switch on than a 4K-weight one (spec §4 pitfall 1).

**Large λ and the step size.** The penalty's gradient is a constant ±λ/52 (or ±λ|W_i|/Σ|W|), so plain SGD moves
a score by lr·λ/52 per step and, once near 0, hops around it with that amplitude (amplified up to 1/(1-μ) by
momentum μ). Layers switch off for good only while that amplitude stays below τ: e.g. lr 0.05, λ = 20,
no momentum gives 0.019 and every unsupported layer turns off; λ = 10⁴ makes the scores jump between 0.15 and
-9.5 and half of the steps are active. This is the paper's objective under SGD (the official code behaves the
same), not something the implementation adds; choose λ (or lr) with it in mind in a λ sweep.

**Warm-up** (``warmup_epochs``). The penalty is off during the first ``warmup_epochs`` epochs of a task's
TAPS training (0-based epochs e < warmup_epochs) and on from epoch ``warmup_epochs``. The official code
penalises when ``epoch > --warmup_epochs`` (default 2: epochs 0, 1, 2 unpenalised of the 31 its loop runs
for ``--epochs 30``), so official ``--warmup_epochs k`` is ``warmup_epochs = k + 1`` here. The default
(null) keeps the official *share*: round(3/31 of the run's TAPS epochs), which is 3 at the official 31, 1 at
10 and 0 at taskshare's default 2 epochs, so a default run applies the penalty (the earlier fixed 3 never
did). An explicit ``warmup_epochs`` >= the epochs means no penalty; the learners warn once.

**Epoch counting.** The runner counts epochs; the learner counts training *samples* it has observed since
`begin_task` (or `begin_all`) and derives ``epoch = samples // len(train split)`` (the sum of the splits for
the offline learners). One epoch is exactly one pass over the split whatever the batch size or a short last
batch; the count is part of the checkpointed state, so a resumed run switches the penalty on at the same
step; the driver also calls `begin_epoch(e)` at each epoch start (a data-parallel rank sees only shards).

**Task-specific parts.** The deltas and scores, every normalization layer (BatchNorm γ, β and running
statistics, LayerNorm/GroupNorm/RMSNorm affine) and the head are slots of one `TaskTensors` over the wrapped
network, so ``tt.activate(task)`` switches all of them (the official code trains every BN per task too; an
"inactive" layer therefore still has its task's BN, spec §4 pitfall 2). The head is new per task and not
gated. Everything else (the base weights, embeddings, ...) is shared and frozen in sequential TAPS.
Neither scores nor deltas are ever weight-decayed (their optimizer group has weight_decay 0; pitfall 10).

**Exactness.** A gated layer computes its base op on W + g·ΔW with g ∈ {0.0, 1.0} produced by an autograd
function, so with ΔW = 0 the outputs equal the base layer's bit for bit. Without gradients (inference) an
inactive layer uses W itself and an active one W + ΔW: the same values as the training path, and the same as
the folded weights of `merged_model`, so exported, merged and trained outputs agree exactly.

**Methods.**

- ``taps`` (sequential, paper's incremental setting): tasks one at a time from a frozen base; a task's
  tensors are its own objects, so earlier tasks stay bit-identical. ``backbone=``:
  ``auto`` (default): ``model`` for a pretrained backbone (``model=mobilenetv2`` or ``minilm``, which
  ``model=auto`` resolves to on transfer-images / transfer-text, or a ``backbone_module=``), else
  ``first-task``.
  ``first-task``: no pretrained backbone exists for the MNIST-like lifelong streams, and TAPS on a
  random frozen base would need nearly every layer (no sharing to discover). So the first task of the stream
  trains the whole network (base weights, its norms and head; its scores are set to 0 < τ: it *is* the base
  and adds no delta), then the base is frozen and every later task learns deltas against it, starting its
  norms from the first task's (the analogue of pretrained BN statistics). This is the official two-stage idea
  with a one-task first stage.
  ``model``: the backbone as built (``--set model=...``; random for mlp/cnn/resnet18, pretrained for
  ``model=mobilenetv2`` (ImageNet, at ``taps.image_size`` px, default 32) or ``minilm`` (also chosen by
  ``auto`` for pre-tokenized text), or the module passed as ``backbone_module=``) is the frozen base from the
  first task.
- ``taps-joint`` (paper's joint multi-task variant; offline): the shared base is trained with all tasks
  together with every task's deltas, scores, norms and head. Each mixed batch is split by task, one forward
  per task (its tensors activated); the loss is the sum of the per-task mean cross-entropies plus each
  present task's penalty (as the official joint script sums per-task losses).
- ``taps-two-stage`` (the official "efficient" variant; offline): stage 1, epochs [0, joint_epochs):
  multi-head hard-shared training of the base on all tasks (shared norms, one head per task, one forward per
  task per batch, per-task losses summed: official ``train_joint.py``). Stage 2, the remaining epochs:
  sequential TAPS of every task from that frozen base. Mapping onto the learner interface: the runner hands
  the tasks to `begin_all` and feeds mixed batches to `observe_mixed`; in stage 2 each batch's per-task
  parts take TAPS steps on that task's own tensors only. Because the base is frozen and the tasks' tensors
  are disjoint (per-parameter optimizer state, no coupling), this is exactly per-task sequential TAPS run
  side by side. The warm-up counts from the start of stage 2. Departures from the official pipeline: the
  stage-1 heads are kept for stage 2 (the official sequential script re-initialises the head because its
  hand-off is broken, spec §4 pitfall 7); the stage-1 shared norms are each task's starting norms.

**Official-compat mode** (sequential ``taps`` only). The official ``train_sequential.py`` (``train()``, lines
19-46; ``_finetune()``, lines 83-143) adds λ·Σ|s_i|/52 to every batch's loss from epoch ``warmup+1`` on, calls
``backward()`` on every batch, and steps the optimizer (then zeroes the gradients) only after batch i of an
epoch with ``i % 8 == 0``: the first step after batch 0 alone, then one per 8 summed (not averaged) batch
gradients, the penalty's gradient summed 8 times too. Gradients are never zeroed at an epoch start, so the
batches after an epoch's last step carry into the next epoch's first step (those of the last epoch are
dropped). The optimizer is SGD momentum 0.9, no Nesterov, wd 0; the lr follows CosineAnnealingLR(T_max=E)
stepped per epoch over E+1 epochs (the last one at lr 0). Two options reproduce this:

- ``accumulate`` (default 1: zero the gradients, backward, step on every batch, the usual loop). With
  ``accumulate=k > 1``: backward on every batch and a step (then zeroed gradients) after batch i of an
  epoch when i % k == 0, the batch index counted from each epoch start; the gradient left at an epoch end
  carries over (and is kept in checkpoints) and the one left at the task end is dropped. Official: 8.
- ``lr_schedule=cosine`` (default ``constant``): lr·(1 + cos(π·e/(epochs−1)))/2 in epoch e of each task.

So ``--set taps.backbone=model taps.penalty=official taps.accumulate=8 taps.lr_schedule=cosine
taps.warmup_epochs=3 optimizer=sgd momentum=0.9 weight_decay=0 lr=0.005 batch_size=32 epochs=31`` (with the
pretrained base given as ``backbone_module``) runs the official ``--lr 0.005 --epochs 30 --warmup_epochs 2``
mechanics: from the same initial tensors and batches, every score, delta, norm, head and loss follows the
official update to float rounding (its penalty rounds λ·Σ|s|/52 in another order), as the known-answer
test ``test_official_compat_step0_step1_known_answer`` checks against an independent re-implementation.
They are not the default because summing 8 batches' gradients makes the effective lr depend on
``accumulate`` and the batch size, and the 8× penalty makes λ's meaning depend on it too; by default one
batch is one step, λ is counted once per step, and the lr is constant, like every other taskshare method.
Not reproduced: the official data pipeline (RandomResizedCrop/flip augmentation, ImageFolder order), the
head's initial values (same Kaiming-uniform distribution, drawn from taskshare's task seed instead of the
global RNG), Nesterov (``train_sequential.py`` ignores its ``--optimizer nag``), weight decay on scores and
deltas when ``--wd`` > 0 (pitfall 10), ``--score_lr`` (unused by the official code too), and model selection
on test error (pitfall 4). taps-joint/taps-two-stage step on every batch (the official ``train_joint.py``
does too); they reject these options.

Transformers: ``layer_types=("Linear",)`` gates the query/key/value/output projections and the MLP layers
(e.g. BertModel's ``query``, ``key``, ``value``, ``dense``) and LayerNorms become task-specific, the analogue of
BN. The paper reports that on ViT TAPS mostly adapts the self-attention layers; the official ViT file gates
only the MLP (``fc1``/``fc2``), scales by the raw score and does not run (spec §1), so it is not followed.
nn.MultiheadAttention reads its projection weights directly (no submodule forward), so its ``out_proj`` cannot
be gated; it is skipped with a warning (HuggingFace attention uses plain Linear layers and is gated).

Artifacts: `export_task` writes a task with only its active layers' deltas (inactive ones are omitted and
equal the base's zeros on load), all scores, norms and head, with the gated/active layer lists and τ in the
metadata; `import_task` loads it onto a fresh wrapped base with checks. `merged_model` folds base + delta into
one plain weight per layer (a plain module, no gating overhead).

Python use with any network (e.g. a pretrained backbone with an integer ``out_dim``)::

    learner = Taps(cfg, Taps.Options(backbone="model", lambda_=0.5), input_shape, backbone_module=pretrained)
    tt = wrap(TaskNet(backbone))       # or wrap any nn.Module whose per-task head is the submodule "head"
    tt.add_task("cars", init=new_head_tensors); tt.activate("cars")   # deltas 0, scores 0.15, norms from base
    export_task(learner, "cars", "out/cars"); import_task(fresh_learner, "out/cars")
    plain = merged_model(learner, "cars")
"""
from taskshare.methods.blocks.gating import (DEFAULT_LAYER_TYPES, LAYER_TYPES, LR_SCHEDULES, NORM_TYPES,
                                             OFFICIAL_N, PENALTIES, SCORE_INIT, TAU, GatedLayer, active_layers,
                                             gate_layers, gated_layers, layer_sizes, penalty, scores, task_penalty,
                                             task_tensors, taps_slots, wrap)
from taskshare.methods.taps.config import TapsJointOptions, TapsOptions, TapsTwoStageOptions
from taskshare.methods.taps.export import export_task, import_task, merged_model
from taskshare.methods.taps.learner import Taps, TapsJoint, TapsTwoStage, taps_backbone

__all__ = ["GatedLayer", "wrap", "gate_layers", "gated_layers", "taps_slots", "layer_sizes", "scores",
           "active_layers", "penalty", "task_penalty", "export_task", "import_task", "merged_model",
           "TapsOptions", "TapsJointOptions", "TapsTwoStageOptions", "Taps", "TapsJoint", "TapsTwoStage",
           "DEFAULT_LAYER_TYPES", "LAYER_TYPES", "LR_SCHEDULES", "NORM_TYPES", "OFFICIAL_N", "PENALTIES",
           "SCORE_INIT", "TAU", "task_tensors", "taps_backbone"]
