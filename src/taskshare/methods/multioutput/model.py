"""``MultiOutputNet``: hard parameter sharing, one shared encoder and one head per task.

``forward(x)`` returns ``{task: head(encoder(x))}``; ``encode`` / ``decode`` split the two halves so a
trainer can differentiate w.r.t. the shared representation (MGDA-UB) or reuse one encoding for all heads.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from taskshare.errors import ConfigError

__all__ = ["MultiOutputNet"]


class MultiOutputNet(nn.Module):
    def __init__(self, encoder: nn.Module, heads: nn.ModuleDict | Mapping[str, nn.Module]):
        super().__init__()
        if not len(heads):
            raise ConfigError("MultiOutputNet needs at least one head; pass heads={task: module}")
        self.encoder = encoder
        self.heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {t: h(z) for t, h in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder's last module that owns parameters (GradNorm's layer W)."""
        last = [m for m in self.encoder.modules() if any(True for _ in m.parameters(recurse=False))]
        if not last:
            raise ConfigError("the encoder has no parameters; GradNorm needs a shared layer")
        return [p for p in last[-1].parameters(recurse=False) if p.requires_grad]
