"""What `taskshare list` prints: the benchmarks and methods of both settings, and one method's options."""
from __future__ import annotations

from taskshare.errors import TaskshareError

__all__ = ["catalog_text", "options_text"]


def catalog_text() -> str:
    """Every benchmark and method with its one-line description, lifelong first, then multi-output."""
    from taskshare.data import BENCHMARKS, USER_BENCHMARKS
    from taskshare.data.multioutput import MULTITASK_BENCHMARKS
    from taskshare.methods import METHODS
    from taskshare.methods.multioutput.options import MULTITASK_METHODS

    sections = [
        ("benchmarks:", {**{n: s.description for n, s in BENCHMARKS.items()}, **USER_BENCHMARKS}),
        ("methods (--method):", {n: c.description for n, c in METHODS.items()}),
        ("multi-task benchmarks (one input, several outputs):",
         {n: s.description for n, s in MULTITASK_BENCHMARKS.items()}),
        ("multi-task methods (--method, with a multi-task benchmark):", MULTITASK_METHODS),
    ]
    return "\n".join(line for title, rows in sections
                     for line in (title, *(f"  {name:<22} {desc}" for name, desc in rows.items())))


def options_text(method: str) -> str:
    """`method`'s options: name, type, default and meaning, one per line; an unknown method: one-line error."""
    from taskshare.config import describe_options
    from taskshare.methods import METHODS
    from taskshare.methods.multioutput.options import OPTION_HELP, multitask_method_options

    multi = multitask_method_options()
    if method not in METHODS and method not in multi:
        raise TaskshareError(f"unknown method {method!r}: choose from {', '.join([*METHODS, *multi])} "
                             "(taskshare list)")
    setting = "lifelong (task streams)" if method in METHODS else "multi-output (one input, several outputs)"
    cls = METHODS[method].Options if method in METHODS else multi[method]
    rows = describe_options(cls, None if method in METHODS else OPTION_HELP)
    lines = [f"{method}: a {setting} method; set with --set {method}.OPTION=VALUE"]
    lines += [f"  {name:<16} {tp:<8} default {default!r:<14} {meaning}" for name, tp, default, meaning in rows]
    return "\n".join(lines if rows else [*lines, "  (no options)"])
