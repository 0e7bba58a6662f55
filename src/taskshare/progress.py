"""Progress for long phases (training, evaluation, search, set-up), on stderr, off when quiet.

One process-wide switch, like `logging`'s level: the CLI calls ``set_quiet(args.quiet)`` once and every
phase, at any layer, asks ``bar(total, desc)`` for a tqdm bar (a no-op object when quiet) and ``say(msg)``
for a one-line status. Library users get progress by default and silence it with ``set_quiet(True)``.
Tests run quiet (tests/conftest.py). Nothing here changes results.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def say(msg: str) -> None:
    """One status line on stderr (nothing when quiet)."""
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def bar(total: int | None, desc: str, unit: str = "batch", quiet: bool | None = None):
    """A tqdm bar on stderr for `total` steps (a no-op bar when quiet); closed on exit, also on Ctrl-C."""
    if _QUIET if quiet is None else quiet:
        yield _NoBar()
        return
    from tqdm import tqdm
    b = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        yield b
    finally:
        b.close()
