"""PAR: task-difficulty-aware parameter allocation and regularization (Wang et al., CVPR 2023).

Task-incremental lifelong learning with a growing set of **experts** (cell networks, `expert.py`) and one
linear head per task. For each new task t (official code WenjinW/PAR@5539e08, ``src/approaches/par_v2.py``):

1. **Relatedness** (`relatedness.py`): features of t's validation split from a frozen extractor, the
   nearest-prototype divergence D(t||p) to every learned task p, s(t, p) = min(1 - exp(-2D), D); t's class
   prototypes are stored for later tasks.
2. **Routing** (`routing.py`): expert score S_e = mean of s over the expert's tasks, e* = argmin, and
   three tiers (0.5 / 0.75): reuse e*, allocate a new expert with e*'s genotype, allocate with search.
   Task 0 always searches. Every task's decision is appended to ``decisions`` (for results.json):
   ``{task, index, action, expert, closest, scores, relatedness, reuse, reuse_from, unit, unit_from,
   genotype_from, ..., added_params, added_buffers}`` (``action`` is always the routing tier;
   ``unit`` says what was allocated: ``expert``, ``patch``/``taps`` (below), None for a reuse;
   ``added_*`` are written at the task's end). Decisions hold no wall times, so they (and the artifacts
   that carry them) are byte-reproducible; each search's seconds go to results.json's
   ``timing.par_search_s`` (`extra_results`).
3. **Regularized reuse** of e*: if N_t < 0.5 · N_max(e*) (the largest training set on e*), only the new
   head is trained, the expert frozen in eval mode (zero forgetting). Otherwise the expert is fine-tuned
   together with the new head (**transfer**), with LwF-style distillation on the heads of e*'s earlier tasks
   against a frozen copy of e* taken before t:

       L = CE(head_t(f(x)), y) + kd_weight · sum_{p on e*} KD_T(head_p(f(x)), head_p(f_teacher(x)))
       KD_T(z, z') = - sum_c q_c log p~_c,  q = softmax(z'/T),  p~ = (softmax(z/T) + eps/C) / (1 + eps)

   T = 2, kd_weight = 1, eps = 1e-5 (the official ``utils.cross_entropy(exp=1/2)``: p^(1/2) renormalised is
   softmax(z/2)). The earlier heads are frozen (official: only the expert and the new head train); experts
   other than e* are never touched.
4. **Allocation**: a new expert (fresh weights from (seed, task index)) and head, trained from scratch; its
   genotype is e*'s (middle tier, the "relatedness-aware" shortcut) or searched by MdeNAS (`search.py`).

**Allocation units (beyond the paper; ``unit``).** ``expert`` (default) is the paper. With ``patch`` or
``taps``, a task routed to allocation (``allocate`` or ``allocate-search``) while an expert exists gets a
small unit on e* (the best-scored expert) instead of a new expert; no search runs. Task 0 still searches and
allocates a real expert, so such a run grows a single expert. The decision keeps its routing ``action`` and
records ``unit`` and ``unit_from`` (the expert's owner, whose tensors the unit starts from).

- ``patch``: a scale-bias+head model patch (Mudrakarta et al. 2019, `taskshare.methods.patches`): the task's
  own head and every BatchNorm's scale, bias and running statistics (trained in train mode); the expert's
  convolution weights are frozen for it. Adds head + BN scale/bias parameters (+ statistics as buffers).
- ``taps``: the same plus TAPS (Wallingford et al. 2022, `taskshare.methods.taps`) gated deltas on every
  convolution of the expert: W + 1[s >= tau]·dW, deltas from 0, scores from 0.15, trained with the TAPS
  sparsity penalty ``taps_lambda`` · R(s) (``taps_penalty``: official sum|s|/52 or size-weighted; off during
  the first ``taps_warmup_epochs`` epochs of the task; deltas and scores not weight-decayed). Adds the patch's
  parameters + one score per convolution + the deltas of the layers left active (they alone are stored).

The first unit converts the expert's `TaskTensors` to a larger slot layout (`units.py`): every task on it
gets its own copy of the BN tensors (and zero, switched-off deltas), equal to what it used, so every earlier
task computes exactly the same outputs; later no task can change another's BN. A unit never touches the
expert's weights or another task's tensors. Units do not count in their expert's score S_e (``score_units``
false, the default): the expert is scored by the tasks that use its own function, its owner and the
tasks that reuse it, so an unrelated unit does not push a task related to the owner away from reuse
(``score_units=true`` scores every task on the expert). Units do not count in N_max either (they do not
train the expert's weights). **Reuse composes**: a task reusing
an expert that carries units starts from the tensors (BN, unit) of its most related task on that expert
(``reuse_from``; the owner on a plain expert), frozen, plus its new head; a transfer reuse fine-tunes the
expert's shared weights and its head, and its KD term runs each earlier task p with p's own tensors in
the student and the teacher (both in eval mode, so p's statistics never move), one pass per group of tasks
with equal tensors.

**BatchNorm under transfer** (``bn``). The official code fine-tunes the reused expert with BN in train
mode, so the running statistics that earlier tasks on that expert are evaluated with drift towards the new
task's data (an unstated source of forgetting), and its KD compares a train-mode student with an eval-mode
teacher (the KD gradient is not zero even at step 0). Options:

- ``frozen`` (default): during transfer the whole expert runs in eval mode: running statistics stay those
  of the allocating task for every task on the expert (BN scale/shift still train, under KD). The student
  is then exactly the function old tasks are evaluated with, so KD regularizes what is measured and its
  gradient at step 0 is ~0 (only the eps smoothing).
- ``task``: BN running statistics are per-task slots of the expert's TaskTensors: the new task starts from
  the allocating task's statistics and updates its own in train mode; earlier tasks keep theirs.
- ``shared``: the official behaviour (one set of statistics per expert, drifting under transfer).

Head-only reuse always runs the expert in eval mode (as the official ``train_fc``).

**Feature extractor** (``extractor``): ``auto`` (default) is the frozen ImageNet MobileNetV2 (1280-d)
when its weights are installed, else the raw flattened inputs (the resolved name is recorded in every
decision); ``mobilenetv2`` / ``raw`` force one. The official code uses an ImageNet ResNet-18 at native
resolution; MobileNetV2 is taskshare's shipped ImageNet network (``extractor_image_size`` resizes, 0 =
native). ``expert`` uses the experts' own features: t's validation data through the expert of each p
(with p's head/statistics bound) against p's prototypes in that expert's space, computed at the end of p
(they go stale if p's expert is later fine-tuned). `set_extractor(fn)` plugs any callable x -> features.
Relatedness uses t's validation split (official); if it has fewer than 2 samples in some class, the
training split is added (recorded as ``relatedness_split``). ``loo`` corrects the estimator's sample-size
bias (see `relatedness.py`); ``zero_is_unrelated`` is the official s = 0 -> 1 quirk.

**Presets** (``preset``; `config.py`). ``paper`` (default) is taskshare's defaults; ``official`` sets every
PAR option to the official code's value at once (explicit options still override it):

    option               paper (default)     official      official source
    few_shot_max         0 (off)             25            strategy(): N_train <= 25 -> reuse
    zero_is_unrelated    false               true          s = 0 -> s = 1
    bn                   frozen              shared        transfer trains BN in train mode
    channels             16                  64            --init_channel=64
    search_epochs        -1 (run-tied)       100           --sample_epochs=100 (CTrL scripts: 50)
    best_val             false               true          best-validation state restored per task
    early_stop_patience  0 (off)             20            --lr_patience=20, train() only
    few_shot_wd_max      0 (off)             25            weight decay x10 if len(train_data) <= 25
    bn_recalibrate       true                false         (beyond the paper; `selection.py`)
    cells/steps/stem     4 / 4 / 3           4 / 4 / 3     (same)
    clip_grad, kd_*      10, T=2, w=1        same          (same)
    extractor            auto (MobileNetV2)  auto          official: ImageNet ResNet-18 (not shipped)

Run settings are not PAR options and no preset changes them; the official scripts use batch 64 (CTrL 32),
lr 0.01, weight decay 0.003 (CTrL 0.03), 100 epochs (CTrL 300-500) with a cosine (or plateau) schedule.
Best-validation selection, early stopping and the few-sample weight decay are in `selection.py`.

**Search budget** (``search_epochs=-1``, the default): the search is tied to the run (`search.search_budget`):
max(run epochs, 10) MdeNAS samples on at most run_epochs·N/epochs training samples (>= 128), so the
search passes over about as many samples as the task's training does. The official code searches a fixed
``sample_epochs`` (100 or 50) on the whole training set; with a short run that leaves the chosen expert
almost untrained (1 run epoch against 10 search epochs on the same data). An explicit ``search_epochs``
(>= 0) with ``search_limit`` restores a fixed search. Gradient clipping (10) is ``clip_grad``. Search uses
the run's lr, momentum and weight decay with a cosine schedule and clipping 5, as the official search.

**Artifacts** (`save_artifact` / `load_artifact`): a task's artifact holds what it added (see
`tensors.py`: an owner's holds its whole expert; the others their head and own BN statistics or unit) and
its prototypes, with the expert's genotype, layout, size options and the task's decision in the metadata.
An owner's artifact loads onto a fresh learner with the same ``channels``/``cells``/``stem_multiplier``/``bn``;
another task's loads once its expert's owner (and the task it started from) is loaded, onto the same
expert tensors (fingerprint). The predictions are then exactly the saved learner's.

**Checkpoints**: `state_dict` holds every expert's genotype, slot layout and TaskTensors state, the routing tables,
prototypes, decisions, the transfer teacher and the optimizer; `load_state_dict` rebuilds experts of other
architectures from their genotypes (in place when they already exist, so a live optimizer stays valid).
Every random draw (expert and head initialisation, search split/batches/samples) derives from
``task_seed(seed, task index, salt)``, so a resumed run repeats an interrupted search exactly.

**Package layout**: `relatedness.py` (prototypes and the estimator), `routing.py`, `search.py` (MdeNAS and its
budget), `expert.py` (cells, experts), `units.py`, `tensors.py`, `config.py` (options, presets), `learner.py`
(the `par` learner), `distill.py` (transfer's distillation), `selection.py` (best-validation, early stopping,
few-sample weight decay), `artifacts.py`.
Beyond the paper, ``par.unit=patch`` / ``par.unit=taps`` allocate a scale-bias+head model patch or TAPS gated
deltas on the most related expert instead of a new expert (`units.py`, `learner.py`); ``expert`` (default)
is the paper's whole-expert allocation.
"""
from taskshare.methods.par.expert import ExpertNet, Genotype
from taskshare.methods.par.config import Options
from taskshare.methods.blocks.distillation import kd_loss
from taskshare.methods.par.learner import PAR
from taskshare.methods.par.relatedness import (divergence, make_extractor, relatedness_matrix, relatedness_report,
                                               similarity, task_relatedness)
from taskshare.methods.par.routing import expert_scores, route
from taskshare.methods.par.search import derive_genotype, search, update

__all__ = ["PAR", "Options", "kd_loss", "ExpertNet", "Genotype", "divergence", "similarity", "task_relatedness",
           "relatedness_matrix", "relatedness_report", "make_extractor", "expert_scores", "route", "search",
           "update", "derive_genotype"]
