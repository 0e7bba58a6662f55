"""taskshare: task-aware parameter sharing for multi-task and lifelong learning in PyTorch.

Layers, each importing only those before it (docs/architecture.md, tests/test_architecture.py):
config, errors, progress -> core (per-task tensors, artifacts, checkpoints) -> models (backbones) ->
data (tasks, streams, benchmarks) -> methods (blocks, then learners by family) -> results (metrics, reports)
-> engine (the run engine, the lifelong and multi-output drivers, loops) -> cli.
"""
__version__ = "0.1.0"
