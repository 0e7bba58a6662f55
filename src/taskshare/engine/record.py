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
from taskshare.errors import ConfigError
from taskshare.core.serialize import atomic_write_bytes

__all__ = ["effective_config", "parse_seeds", "run_section", "write_config"]


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


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (duplicates dropped); a one-line error otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--seed {text!r}: give a seed (0..{2**32 - 1}) or a comma-separated list, e.g. 0,1,2")
    seeds = list(dict.fromkeys(int(p) for p in parts))
    if max(seeds) > 2**32 - 1:
        raise ConfigError(f"--seed must be between 0 and {2**32 - 1}, got {max(seeds)}")
    return seeds


def run_section(raw: dict[str, Any], benchmark: str | None, method: str | None, seed: str | None,
                seeds: int | None, grid: list[str]) -> tuple[str | None, str | None, list[int], list[str]]:
    """(benchmark, methods, seed list, grid) from the command line, else from a config file's ``run``
    section (what config.yaml writes; removed from `raw`), else the top-level ``seed``, else seed 0."""
    run = raw.pop("run", {}) or {}
    if not isinstance(run, dict) or set(run) - {"benchmark", "method", "seed", "grid"}:
        raise ConfigError("the config's run section takes benchmark, method, seed and grid (as config.yaml writes)")
    if not grid and run.get("grid"):
        grid = [f"{k}={','.join(map(str, v))}" for k, v in dict(run["grid"]).items()]
    if method is None and run.get("method"):
        method = ",".join(run["method"]) if isinstance(run["method"], list) else str(run["method"])
    if seeds is not None:
        if seed is not None or not 1 <= seeds <= 100:
            raise ConfigError("--seeds N takes 1 <= N <= 100 and replaces --seed: give one of them")
        text = ",".join(map(str, range(seeds)))
    elif seed is not None:
        text = seed
    else:
        found = run.get("seed", raw.get("seed", 0))
        text = ",".join(map(str, found)) if isinstance(found, list) else str(found)
    return benchmark or run.get("benchmark"), method, parse_seeds(str(text)), list(grid)
