"""Per-task gradients of the shared parameters, in one flat K x D buffer.

For K task losses L_1..L_K and shared parameters theta_s (D elements in all), ``per_task_gradients`` returns
the Jacobian rows G[k] = d L_k / d theta_s, flattened in parameter order, on the parameters' device:

- ``"loop"``: K calls ``autograd.grad(L_k, params, retain_graph=True)`` (the official AdaTask code does K
  retained ``backward`` passes, which is the same computation);
- ``"batched"``: one ``autograd.grad(stack(L), params, grad_outputs=eye(K), is_grads_batched=True)``, i.e. the
  K vector-Jacobian products vmapped over the rows of the identity;
- ``"auto"``: ``"loop"`` on CPU. The timing study in shared/reference/stack.md section 3 (K=10) found batching
  ~2x faster than the loop on an MLP and 0.98-1.21x the loop on conv nets, but our own measurements on this
  CPU build did not reproduce the MLP gain: batched was 1.2-1.6x the loop's time for K = 2, 3, 10, with 1 and
  2 threads, on the 784-256-256 MLP and on the LeNet (BENCHMARKS.md, "Multi-task step cost"). On other
  devices (not measured here) ``auto`` keeps the study's rule: ``"batched"`` when the model / graph has no
  convolution or batch-norm, else ``"loop"``. Both modes give the same gradients.

A task whose loss does not reach a parameter (``None`` from autograd) leaves zeros in its row. Which rows
are structurally missing is available from ``reach_mask`` (graph traversal, no gradient computed).

The layout (offsets of each parameter inside a row) is computed once by ``FlatLayout`` in O(P); ``views``,
``flatten`` and ``write_grads`` move between the flat buffer and per-parameter tensors without copies
where possible.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from taskshare.errors import ConfigError

__all__ = [
    "FlatLayout", "GRAD_MODES", "choose_mode", "flatten", "graph_has_conv_or_bn", "per_task_gradients",
    "reach_mask", "write_grads",
]

GRAD_MODES = ("loop", "batched", "auto")
_SLOW_BATCHED = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)
_SLOW_NODE_NAMES = ("Convolution", "BatchNorm")


@dataclass(frozen=True)
class FlatLayout:
    """Where each parameter lives in a flat D-vector: ``offsets[i]:offsets[i] + numels[i]``."""

    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    total: int

    @classmethod
    def of(cls, params: Sequence[Tensor]) -> FlatLayout:
        shapes, offsets, numels, off = [], [], [], 0
        for p in params:
            shapes.append(p.shape)
            offsets.append(off)
            numels.append(p.numel())
            off += p.numel()
        return cls(tuple(shapes), tuple(offsets), tuple(numels), off)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of ``flat`` (shape (..., D)): each (..., *shape)."""
        if flat.shape[-1] != self.total:
            raise ConfigError(f"flat buffer has {flat.shape[-1]} columns, the layout {self.total}; "
                              "build the layout from the same parameters")
        lead = flat.shape[:-1]
        return [flat[..., o:o + n].view(*lead, *s) for s, o, n in zip(self.shapes, self.offsets, self.numels)]


def flatten(tensors: Sequence[Tensor | None], layout: FlatLayout, out: Tensor | None = None) -> Tensor:
    """Concatenate per-parameter tensors (each (..., *shape) or None -> zeros) into (..., D)."""
    if out is None:
        i = next((i for i, t in enumerate(tensors) if t is not None), None)
        if i is None:
            raise ConfigError("flatten got only None tensors; pass `out` to fix the shape, dtype and device")
        lead = tensors[i].shape[:tensors[i].dim() - len(layout.shapes[i])]
        out = tensors[i].new_zeros(*lead, layout.total)
    for t, view in zip(tensors, layout.views(out)):
        if t is None:
            view.zero_()
        else:
            view.copy_(t)
    return out


def write_grads(params: Sequence[Tensor], flat: Tensor, layout: FlatLayout | None = None,
                accumulate: bool = False) -> None:
    """Write a flat D-vector into ``p.grad`` of each parameter (set, or add when ``accumulate``)."""
    layout = layout or FlatLayout.of(params)
    for p, g in zip(params, layout.views(flat)):
        if accumulate and p.grad is not None:
            p.grad.add_(g)
        else:
            p.grad = g.detach().clone()


def graph_has_conv_or_bn(roots: Iterable[Tensor]) -> bool:
    """True when the autograd graph below ``roots`` has a convolution or batch-norm backward node."""
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        name = type(fn).__name__
        if any(s in name for s in _SLOW_NODE_NAMES):
            return True
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return False


def choose_mode(model: nn.Module, device: torch.device | str | None = None) -> str:
    """The ``auto`` choice: ``"loop"`` on CPU; elsewhere ``"batched"`` for models without conv / batch-norm.

    ``device`` defaults to the model's (first parameter's) device.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if torch.device(device).type == "cpu":
        return "loop"
    return "loop" if any(isinstance(m, _SLOW_BATCHED) for m in model.modules()) else "batched"


def reach_mask(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """(K, P) bool: ``[k, i]`` is True when loss k's autograd graph reaches parameter i (structural)."""
    index = {id(p): i for i, p in enumerate(params)}
    mask = torch.zeros(len(losses), len(params), dtype=torch.bool)
    for k, loss in enumerate(losses):
        stack = [loss.grad_fn] if loss.grad_fn is not None else []
        seen: set[int] = set()
        while stack:
            fn = stack.pop()
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            var = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf
            if var is not None and id(var) in index:
                mask[k, index[id(var)]] = True
            stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return mask


def per_task_gradients(losses: Sequence[Tensor], params: Sequence[Tensor], mode: str = "auto", *,
                       layout: FlatLayout | None = None, model: nn.Module | None = None,
                       retain_graph: bool = False, out: Tensor | None = None) -> Tensor:
    """Rows ``G[k] = d losses[k] / d params`` flattened: a (K, D) tensor on the parameters' device.

    ``mode`` is "loop", "batched" or "auto" (loop on CPU; elsewhere batched unless ``model`` / the graph has
    conv or BN).
    ``retain_graph=True`` keeps the graph for a later backward (e.g. of the summed loss for the heads).
    ``out`` (K, D) is reused when given. Missing gradients are zeros.
    """
    if mode not in GRAD_MODES:
        raise ConfigError(f"unknown per-task gradient mode {mode!r}; use one of {', '.join(GRAD_MODES)}")
    params = list(params)
    if not params or not len(losses):
        raise ConfigError("per_task_gradients needs at least one loss and one parameter")
    if any(p.dtype != params[0].dtype for p in params):
        raise ConfigError("per_task_gradients needs parameters of one dtype; cast the model (e.g. .double())")
    if any(loss.numel() != 1 for loss in losses):
        raise ConfigError("per_task_gradients needs one scalar loss per task; reduce each loss (e.g. .mean())")
    layout = layout or FlatLayout.of(params)
    K = len(losses)
    if out is None:
        out = torch.zeros(K, layout.total, dtype=params[0].dtype, device=params[0].device)
    elif out.shape != (K, layout.total):
        raise ConfigError(f"`out` has shape {tuple(out.shape)}, expected {(K, layout.total)}")
    else:
        out.zero_()
    live = [k for k, loss in enumerate(losses) if loss.requires_grad]
    if not live:
        return out
    if mode == "auto":
        if model is not None:
            mode = choose_mode(model, params[0].device)
        elif params[0].device.type == "cpu" or graph_has_conv_or_bn(losses[k] for k in live):
            mode = "loop"
        else:
            mode = "batched"
    rows = layout.views(out)  # each (K, *shape)
    if mode == "loop":
        for j, k in enumerate(live):
            keep = retain_graph or j < len(live) - 1
            grads = torch.autograd.grad(losses[k], params, retain_graph=keep, allow_unused=True)
            for row, g in zip(rows, grads):
                if g is not None:
                    row[k].copy_(g)
    else:
        stacked = torch.stack([losses[k].reshape(()) for k in live])
        eye = torch.eye(len(live), dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(stacked, params, grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=retain_graph, allow_unused=True)
        idx = torch.tensor(live, device=out.device) if len(live) < K else None
        for row, g in zip(rows, grads):
            if g is None:
                continue
            if idx is None:
                row.copy_(g)
            else:
                row.index_copy_(0, idx, g)
    return out
