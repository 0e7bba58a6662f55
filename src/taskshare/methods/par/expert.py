"""PAR's experts: a cell network (`taskshare.models.cells`: the genotype, the operations, `ExpertNet`; the
architecture is described there) plus the `TaskTensors` over it, its tasks and its slot layout.
"""
from __future__ import annotations

from dataclasses import dataclass

from taskshare.core import TaskTensors
from taskshare.models.cells import (CELL_TYPES, PRIMITIVES, AvgPool3, Cell, DilConv, ExpertNet, FactorizedReduce,
                                    Genotype, MaxPool3, ReLUConvBN, SepConv, Zero, bn_buffer_names, build_expert,
                                    make_op, reduction_cells)

__all__ = ["CELL_TYPES", "PRIMITIVES", "AvgPool3", "Cell", "DilConv", "Expert", "ExpertNet", "FactorizedReduce",
           "Genotype", "MaxPool3", "ReLUConvBN", "SepConv", "Zero", "bn_buffer_names", "build_expert", "make_op",
           "reduction_cells"]


@dataclass
class Expert:
    genotype: Genotype
    in_channels: int
    net: ExpertNet
    tt: TaskTensors
    tasks: list[str]
    max_train: int                    # the largest training set that trained the expert (owner, reuses)
    layout: str = "expert"            # which tensors are per-task slots (`units.py`): expert | patch | taps

    @property
    def owner(self) -> str:
        return self.tasks[0]

    def state(self) -> dict:
        """What a checkpoint keeps of the expert (`PAR.load_state_dict` rebuilds it)."""
        return {"genotype": self.genotype.to_dict(), "in_channels": self.in_channels, "tasks": list(self.tasks),
                "max_train": self.max_train, "layout": self.layout, "tt": self.tt.state()}
