"""taskshare: task-aware parameter sharing for multi-task and lifelong learning in PyTorch.

Layout: data (tasks, streams) -> models (backbones) -> core (per-task tensors, artifacts) ->
methods (learners by family) -> engine (config, loops, runner) -> results (metrics, reports) -> cli.
"""
__version__ = "0.1.0"
