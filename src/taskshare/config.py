"""Run configuration: defaults in one visible place, a config file (YAML or TOML), `--set key=value`.

Top-level keys are the fields of `RunConfig`. Two kinds of sections hold options of their own:
``benchmark`` (passed to the benchmark builder, e.g. ``benchmark.n_tasks=5``) and one section per method
(``ewc.lambda=100``), validated against that method's `Options` dataclass. Every value is checked at load
time; an unknown key or a value of the wrong type is a one-line ConfigError naming the valid choices.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskshare.errors import ConfigError


@dataclass
class RunConfig:
    epochs: int = 2                   # passes over each task's training split
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"            # sgd | adam
    momentum: float = 0.9             # SGD only
    weight_decay: float = 0.0
    model: str = "auto"               # auto | mlp | cnn | resnet18 | lenet | par-cell | mobilenetv2 | mobilenetv2-random | minilm
                                      # (models.build_backbone; multi-output sets: auto | mlp | cnn | resnet18 | lenet)
    limit: int | None = None          # cap on training samples per task (quick runs)
    precision: str = "fp32"           # fp32 | bf16 (CPU autocast)
    device: str = "cpu"
    seed: int = 0
    checkpoint_minutes: float = 5.0   # also checkpoint at an epoch end when this long has passed
    eval_batch_size: int = 128        # inference batches: convolutional models run 1.3-3x faster per image at
                                      # 128 than at 1024 on CPU, same outputs (BENCHMARKS.md, issue 14)
    benchmark: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainSettings:
    """The run settings a learner may read: how to train, not what to run on or where to write
    (no benchmark, limit, checkpoint or method sections; each learner gets its own Options besides)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    model: str
    precision: str
    device: str
    seed: int
    eval_batch_size: int

    @classmethod
    def of(cls, cfg: "RunConfig | TrainSettings") -> "TrainSettings":
        if isinstance(cfg, TrainSettings):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


CHOICES = {"optimizer": ("sgd", "adam"), "precision": ("fp32", "bf16")}
MAX_SEED = 2**32 - 1
MAX_LR = 1e6          # beyond this no optimizer step is meaningful (and 1e39 does not fit float32)
MAX_INT = 2**31 - 1   # epochs, batch sizes, limits: anything larger is a typo
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _base_type(tp: Any) -> tuple[type, bool]:
    """(type, optional) for the simple annotations used in option dataclasses."""
    if isinstance(tp, str):
        tp = eval(tp, {"Any": Any, "typing": typing})  # annotations are plain builtins
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _base_type(inner)[0], True
    return (typing.get_origin(tp) or tp), False


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to the annotated type `tp`; strings from `--set` are parsed as YAML scalars."""
    base, optional = _base_type(tp)
    if isinstance(value, str) and base is not str:
        try:
            value = float(value) if base is float else yaml.safe_load(value)  # YAML reads 1e-3 as a string
        except ValueError:
            value = _yaml_scalar(value)
        except yaml.YAMLError:
            pass
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null: give a {base.__name__}")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:
            raise ConfigError(f"{key}={value} is too large: give a finite number")
        value = float(value)
    if base is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not finite: give a finite number, e.g. --set {key}=0.1")
    if base is tuple and isinstance(value, list):
        return tuple(value)
    if base is Any or isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r} is not a valid {base.__name__}: e.g. --set {key}=<{base.__name__}>")


def check_options(cls: type, values: dict[str, Any], section: str) -> Any:
    """Build the method/benchmark options dataclass `cls` from `values`, validating keys and types."""
    # a field `lambda_` is spelled `lambda` by users (a Python keyword cannot be a field name)
    fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        if k not in fields:
            raise ConfigError(f"unknown option {section}.{k}: valid options are "
                              f"{', '.join(f'{section}.{n}' for n in fields) or 'none'}")
        out[fields[k]] = coerce(v, hints[fields[k]], f"{section}.{k}")
    try:
        return cls(**out)
    except ValueError as e:  # __post_init__ range checks
        raise ConfigError(f"{section}: {e}") from None


def check_option_dict(defaults: dict[str, Any], values: dict[str, Any], section: str) -> dict[str, Any]:
    """`check_options` for options declared as {name: default} (the lifelong benchmarks): the same key check
    and message; values are coerced to their default's type (any value where the default is None)."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option {section}.{unknown[0]}: valid options are "
                          f"{', '.join(f'{section}.{n}' for n in sorted(defaults)) or 'none'}")
    return {k: v if defaults[k] is None or k not in values else coerce(v, type(defaults[k]), f"{section}.{k}")
            for k, v in {**defaults, **values}.items()}


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment after it in the class source (continuation comment lines joined)."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue   # built at run time (no source)
        last = None
        for line in lines:
            field = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
            more = re.match(r"\s+#\s*(.*)$", line)
            if field and not line.strip().startswith("#"):
                last = field.group(1)
                if field.group(2):
                    out[last] = field.group(2).strip()
            elif more and last in out:
                out[last] += " " + more.group(1).strip()
            else:
                last = None
    return out


def describe_options(cls: type, help: dict[str, str] | None = None) -> list[tuple[str, str, Any, str]]:
    """(name as users spell it, type, default, one-line meaning) of each field of options dataclass `cls`;
    the meaning comes from `help` or the comment after the field in the source."""
    comments = {**_field_comments(cls), **(help or {})}
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tp = hints.get(f.name, Any)
        name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append((f.name.rstrip("_"), name, default, comments.get(f.name, "")))
    return rows


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} not found: check the --config path")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a file: give the path of a .yaml or .toml file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror}): check its permissions") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {p}: unknown format {p.suffix!r}; use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"config file {p} does not parse ({first}): fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """['epochs=3', 'ewc.lambda=100'] -> nested dict (values still strings; coerced by build_config)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=3 or --set ewc.lambda=100")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
        node[parts[-1]] = value
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def check_ranges(top: dict[str, Any]) -> None:
    """Range checks of the run settings in `top` (already of the right types): one-line ConfigErrors."""
    for key in ("epochs", "batch_size", "eval_batch_size", "limit"):
        if top.get(key) is not None:
            _need(1 <= top[key] <= MAX_INT, f"{key} must be between 1 and {MAX_INT}, got {top[key]}")
    if "lr" in top:
        _need(0 < top["lr"] <= MAX_LR, f"lr must be a positive number at most {MAX_LR:g}, got {top['lr']}: "
              "e.g. --set lr=0.01")
    if "weight_decay" in top:
        _need(0 <= top["weight_decay"] <= MAX_LR, f"weight_decay must be between 0 and {MAX_LR:g}, got "
              f"{top['weight_decay']}: e.g. --set weight_decay=0.0005")
    if "momentum" in top:
        _need(0 <= top["momentum"] < 1, f"momentum must be in [0, 1), got {top['momentum']}: e.g. --set momentum=0.9")
    if "seed" in top:
        _need(0 <= top["seed"] <= MAX_SEED, f"seed must be between 0 and {MAX_SEED}, got {top['seed']}")
    if "device" in top:
        _need(bool(_DEVICE.match(str(top["device"]))),
              f"device={top['device']!r} is not known: use cpu, cuda or cuda:N")
    if "checkpoint_minutes" in top:
        _need(top["checkpoint_minutes"] > 0, f"checkpoint_minutes must be positive, got {top['checkpoint_minutes']}")


def _plain_value(v: Any) -> Any:
    """A typed option value as JSON/YAML keep it (tuples as lists)."""
    return [_plain_value(x) for x in v] if isinstance(v, (tuple, list)) else v


def build_config(raw: dict[str, Any], method_options: dict[str, type]) -> RunConfig:
    """Validate a raw nested dict into a RunConfig; `method_options` maps method name -> Options class."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        if k in method_options:
            if not isinstance(v, dict):
                raise ConfigError(f"{k} must be a section of options, e.g. --set {k}.<option>=<value>")
            sections[k] = v
        elif k == "benchmark":
            if not isinstance(v, dict):
                raise ConfigError("benchmark must be a section of options, e.g. --set benchmark.n_tasks=5")
            top[k] = dict(v)
        elif k in _FIELDS and k != "methods":
            top[k] = coerce(v, typing.get_type_hints(RunConfig)[k], k)
        else:
            valid = [n for n in _FIELDS if n != "methods"] + sorted(method_options)
            raise ConfigError(f"unknown config key {k!r}: valid keys are {', '.join(valid)}")
    for key, choices in CHOICES.items():
        if key in top and top[key] not in choices:
            raise ConfigError(f"{key}={top[key]!r} is not valid: choose one of {', '.join(choices)}")
    check_ranges(top)
    cfg = RunConfig(**top)
    for name, values in sections.items():  # validate now (build again per run); keep the given keys, typed
        opts = check_options(method_options[name], values, name)
        names = {f.name.rstrip("_"): f.name for f in dataclasses.fields(opts)}
        sections[name] = {k: _plain_value(getattr(opts, names[k])) for k in values}
    cfg.methods = sections
    return cfg
