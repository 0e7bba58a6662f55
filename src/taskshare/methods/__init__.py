"""Methods by family. `METHODS` maps each `--method` name to its learner class."""
from taskshare.methods.base import Learner
from taskshare.methods.lifelong import EWC, ExpertPerTask, Finetune, Joint, LwF
from taskshare.methods.par import PAR
from taskshare.methods.taps import Taps, TapsJoint, TapsTwoStage

METHODS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (Finetune, EWC, LwF, ExpertPerTask, Joint, Taps, TapsJoint, TapsTwoStage, PAR)}


def method_options() -> dict[str, type]:
    """Section name -> options dataclass, for config validation."""
    return {name: cls.Options for name, cls in METHODS.items()}


__all__ = ["METHODS", "Learner", "method_options"]
