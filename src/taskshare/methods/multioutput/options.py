"""Options of the multi-output methods: each method's own (trainer.METHOD_OPTIONS) plus the common ones, as
dataclasses that `config.check_options` validates (one-line errors naming the valid options)."""
from __future__ import annotations

import dataclasses
from typing import Any

from taskshare.config import RunConfig, check_options
from taskshare.errors import ConfigError
from taskshare.methods.multioutput.adatask import VARIANTS
from taskshare.methods.multioutput.trainer import METHOD_OPTIONS, METHODS, REGISTRY

__all__ = ["COMMON_OPTIONS", "MULTITASK_METHODS", "method_options", "multitask_method_options"]

MULTITASK_METHODS: dict[str, str] = {
    **METHODS, "stl": "single-task baselines: one network per task, same code and settings (Δm reference)"}
# one-line meanings for `taskshare list --options METHOD`
OPTION_HELP: dict[str, str] = {
    "record_au": "record the per-task update shares (AU) from the optimizer's actual update, per layer",
    "au_gamma": "decay of the AU running average",
    "grad_mode": "per-task gradients: auto | loop (retained-graph autograd.grad) | batched (is_grads_batched)",
    "kinds": "per task: regression | classification (null: from the benchmark's loss kinds)",
    "T": "DWA temperature", "alpha": "GradNorm's asymmetry alpha", "lr": "GradNorm's learning rate for the weights",
    "ub": "MGDA-UB: min-norm on the shared representation's gradients", "normalize": "MGDA gradient "
    "normalisation: none | l2 | loss | loss+", "c": "CAGrad's radius c", "rescale": "CAGrad rescale mode 0 | 1 | 2",
    "solver": "CAGrad's inner solver: exact | official", "missing": "tasks without a gradient in a step: skip | zero",
    "pcgrad_on": "AdaTask+PCGrad: project gradients | updates", "variant": "the AdaTask optimizer: adam | rmsprop | "
    "adagrad"}
# options every multi-task method accepts besides its own (METHOD_OPTIONS)
COMMON_OPTIONS: dict[str, Any] = {"record_au": False, "au_gamma": 0.999, "grad_mode": "auto"}


def _defaults(method: str) -> dict[str, Any]:
    if method == "stl":
        return {}
    d = dict(METHOD_OPTIONS[method])
    if method == "uw":
        d["kinds"] = None                   # None: from the benchmark's loss kinds (ce -> classification)
    if REGISTRY[method].family == "adatask":
        d["variant"] = "adam"
    d.update(COMMON_OPTIONS)
    return d


def _options_class(method: str) -> type:
    fields = []
    for k, v in _defaults(method).items():
        tp = Any if v is None or k == "kinds" else type(v)
        fields.append((k, tp, dataclasses.field(default=v)))
    name = "".join(p.capitalize() for p in method.replace("+", "_").split("_")) + "Options"
    return dataclasses.make_dataclass(name, fields)


_OPTION_CLASSES = {m: _options_class(m) for m in MULTITASK_METHODS}


def multitask_method_options() -> dict[str, type]:
    """Section name -> options dataclass of every multi-task method (for ``build_config``)."""
    return dict(_OPTION_CLASSES)


def method_options(method: str, cfg: RunConfig) -> dict[str, Any]:
    """``cfg.methods[method]`` validated (one-line ConfigError naming the valid options) with defaults."""
    if method not in MULTITASK_METHODS:
        raise ConfigError(f"unknown multi-task method {method!r}; choose from {', '.join(MULTITASK_METHODS)}")
    opts = dataclasses.asdict(check_options(_OPTION_CLASSES[method], dict(cfg.methods.get(method, {})), method))
    if "variant" in opts and opts["variant"] not in VARIANTS:
        raise ConfigError(f"{method}.variant={opts['variant']!r} unknown; use one of {', '.join(VARIANTS)}")
    return opts
