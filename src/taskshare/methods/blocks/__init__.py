"""Building blocks that any method may use, below the methods themselves (methods import blocks, never
each other): TAPS's gated layer and sparsity penalty (`gating`), model patches' slots and BN folding
(`patching`), knowledge distillation (`distillation`) and the transfer backbones (`backbones`)."""
