"""Fine-tuning: one shared backbone trained on every task in turn, a new head per task.

The lower bound of lifelong learning: nothing protects earlier tasks, so the shared backbone drifts and
their accuracy drops (catastrophic forgetting). Earlier heads are never updated (they are other tasks'
tensors in the per-task-tensor core, outside the optimizer).
"""
from taskshare.methods.base import SharedBackboneLearner


class Finetune(SharedBackboneLearner):
    name = "finetune"
    description = "shared backbone fine-tuned on each task in turn, new head per task (lower bound)"
