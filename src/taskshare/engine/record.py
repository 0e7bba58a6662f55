"""A run's `config.yaml`: every effective setting (defaults included, typed) of one `taskshare run`, in the
form `--config` reads, so that `taskshare run --config OUT/config.yaml` repeats the run exactly.

The ``run`` section names what the command line chose (benchmark, methods, seeds); the other keys are the
RunConfig fields, the benchmark's options and each method's options, all with their defaults filled in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from taskshare.config import RunConfig, check_options
from taskshare.core.serialize import atomic_write_bytes

__all__ = ["effective_config", "write_config"]


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _method_values(method: str, cfg: RunConfig, multi_output: bool) -> dict[str, Any]:
    if multi_output:
        from taskshare.methods.multioutput.options import method_options
        values = method_options(method, cfg)
    else:
        from taskshare.methods import METHODS
        opts = check_options(METHODS[method].Options, dict(cfg.methods.get(method, {})), method)
        values = dataclasses.asdict(opts)
    return {k.rstrip("_"): _plain(v) for k, v in values.items()}   # lambda_ is spelled lambda


def effective_config(cfg: RunConfig, benchmark: str, methods: list[str], seeds: list[int],
                     multi_output: bool) -> dict[str, Any]:
    """The nested dict written to config.yaml (see module docstring)."""
    if multi_output:
        from taskshare.data.multioutput import benchmark_options
        bench = dataclasses.asdict(benchmark_options(benchmark, cfg.benchmark))
    else:
        from taskshare.config import check_option_dict
        from taskshare.data.benchmarks import benchmark_defaults
        bench = check_option_dict(benchmark_defaults(benchmark), dict(cfg.benchmark), "benchmark")
    top = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
           if f.name not in ("methods", "benchmark", "seed")}
    out: dict[str, Any] = {"run": {"benchmark": benchmark, "method": list(methods), "seed": list(seeds)}}
    out.update(top)
    out["benchmark"] = _plain(bench)
    for m in methods:
        out[m] = _method_values(m, cfg, multi_output)
    return out


def write_config(path: str | Path, config: dict[str, Any]) -> Path:
    text = ("# every effective setting of this run; repeat it with: taskshare run --config " + Path(path).name
            + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)
