"""taskshare: task-aware parameter sharing for multi-task and lifelong learning in PyTorch.

Layers, each importing only those before it (docs/architecture.md, tests/test_architecture.py):
config, errors, progress -> core (per-task tensors, artifacts, checkpoints) -> models (backbones) ->
data (tasks, streams, benchmarks) -> methods (blocks, then learners by family) -> results (metrics, reports)
-> api (wrap/load: your own model made task-aware) -> engine (the run engine, the lifelong and multi-output
drivers, loops) -> cli.

`taskshare.wrap`, `taskshare.load` and `taskshare.TaskModel` are the PEFT-style entry points (taskshare.api),
imported on first use so that `import taskshare` stays light.
"""
from taskshare._version import __version__ as __version__

_API = ("wrap", "load", "TaskModel")


def __getattr__(name: str):
    if name in _API:
        import taskshare.api as api  # the root re-exports the top layer lazily (tests/test_architecture.py)
        return getattr(api, name)
    raise AttributeError(f"module 'taskshare' has no attribute {name!r}")
