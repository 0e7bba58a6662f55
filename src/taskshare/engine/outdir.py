"""Output folders: checked before any training, one run at a time, names that fit any file system.

- `prepare_out(path)`: the folder exists (created), is a folder, is writable, and has room (one-line
  ConfigError otherwise, before the first training step).
- `RunLock(path)`: an advisory ``fcntl.flock`` on ``OUT/.lock`` held for the whole run; a second run into
  the same folder fails at once with a line naming the holder's pid. `report` reads without it.
- `default_out(benchmark)`: runs/<benchmark as a short, safe file name> (`core.paths.safe_name`).
- `remove_orphans(folder)`: the temporary files an interrupted atomic write left behind.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from taskshare.core.paths import safe_name
from taskshare.errors import ConfigError

LOCK = ".lock"
MIN_FREE_BYTES = 16 << 20


def seed_dir(out: Path, seed: int, seeds: list[int]) -> Path:
    """Where one seed's run goes: OUT itself for one seed, OUT/seed-S for several."""
    return out if len(seeds) == 1 else out / f"seed-{seed}"


def default_out(benchmark: str) -> Path:
    """runs/<benchmark as a safe, short name>."""
    return Path("runs") / safe_name(benchmark)


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def prepare_out(path: str | os.PathLike, what: str = "--out", need_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create the output folder `path` if needed and check that taskshare can write there."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{what} {p}: {parent} is a file, not a folder; choose another {what}")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {p} is not writable ({e.strerror or e}): choose a folder you can write to") from None
    free = _free_bytes(p)
    if free is not None and free < need_bytes:
        raise ConfigError(f"{what} {p}: only {free / 2**20:.1f} MiB free on its disk, {need_bytes / 2**20:.0f} MiB "
                          "needed; free some space or choose another folder")
    return p


class RunLock:
    """``with RunLock(out):`` holds an exclusive advisory lock on ``out/.lock`` (the file keeps the holder's pid).

    The lock is released when the process exits, however it exits (the kernel drops flock locks).
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{self.path.parent} is in use by another taskshare run (pid {holder}): wait for "
                                  "it to finish or choose another --out") from None
            raise ConfigError(f"cannot lock {self.path} ({e.strerror}): choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_ORPHAN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # core.serialize.atomic_write_bytes: .NAME.XXXXXXXX.tmp


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left (``.NAME.XXXXXXXX.tmp``) where taskshare
    writes: ``folder``, its method folders and their ``artifacts/`` (nowhere deeper, nothing else).

    Call it only while holding the folder's RunLock: then no other writer can own them.
    """
    root = Path(folder)
    places = [root, *(p for p in root.glob("*") if p.is_dir()), *(p for p in root.glob("*/artifacts") if p.is_dir())]
    removed = []
    for place in places:
        for p in place.glob(".*.tmp"):
            if _ORPHAN.match(p.name) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed
