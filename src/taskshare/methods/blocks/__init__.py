"""Building blocks that any method may use, below the methods themselves (methods import blocks, never
each other): TAPS's gated layer and sparsity penalty (`gating`), model patches' slots and BN folding
(`patching`), knowledge distillation (`distillation`). Networks come from the one builder,
`taskshare.models.build_backbone`."""
