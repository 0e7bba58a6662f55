"""Multi-output multi-task learning: hard parameter sharing, per-task gradients, AdaTask, AU, baselines.

- ``model``: ``MultiOutputNet(encoder, heads)``
- ``sharing``: ``detect_sharing`` (shared vs task-specific parameters from the autograd graph)
- ``gradients``: ``per_task_gradients`` (K x D flat matrix; loop / batched autograd)
- ``aggregators``: pure functions of G (ew, mean, pcgrad, mgda, mgda_ub_weights, cagrad)
- ``weighting``: UncertaintyWeighting, DWA, GradNorm
- ``adatask``: AdaTaskAdam / AdaTaskRMSprop / AdaTaskAdagrad, ``make_adatask(variant, ...)``
- ``au``: ``AURecorder`` and ``plot_au``
- ``trainer``: ``MultiTaskTrainer`` and the ``METHODS`` registry
- ``runner``: ``run_multitask`` (results.json with task_metrics / stl_baseline / delta_m, checkpoints,
  AU plots, torchrun) lives in ``taskshare.engine.multioutput``

The benchmarks (``MULTITASK_BENCHMARKS``) live in ``taskshare.data.multioutput``.
"""
from taskshare.methods.multioutput.adatask import AdaTask, AdaTaskAdagrad, AdaTaskAdam, AdaTaskRMSprop, make_adatask
from taskshare.methods.multioutput.aggregators import AGGREGATORS, cagrad, ew, mean, mgda, mgda_ub_weights, pcgrad
from taskshare.methods.multioutput.au import AURecorder, plot_au
from taskshare.methods.multioutput.gradients import FlatLayout, per_task_gradients, write_grads
from taskshare.methods.multioutput.model import MultiOutputNet
from taskshare.methods.multioutput.sharing import Sharing, detect_sharing
from taskshare.methods.multioutput.trainer import METHOD_OPTIONS, METHODS, MultiTaskTrainer
from taskshare.methods.multioutput.weighting import DWA, GradNorm, UncertaintyWeighting

__all__ = [
    "AGGREGATORS", "AURecorder", "AdaTask", "AdaTaskAdagrad", "AdaTaskAdam", "AdaTaskRMSprop", "DWA",
    "FlatLayout", "GradNorm", "METHODS", "METHOD_OPTIONS", "MultiOutputNet", "MultiTaskTrainer", "Sharing",
    "UncertaintyWeighting", "cagrad", "detect_sharing", "ew", "make_adatask", "mean", "mgda",
    "mgda_ub_weights", "pcgrad", "per_task_gradients", "plot_au", "write_grads",
]
