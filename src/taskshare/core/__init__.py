"""The per-task-tensor core shared by every method."""
from taskshare.core.artifacts import load_task, save_task
from taskshare.core.tasktensors import TaskTensors

__all__ = ["TaskTensors", "save_task", "load_task"]
