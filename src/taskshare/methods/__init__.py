"""Methods by family. `METHODS` maps each `--method` name to its learner class."""
from taskshare.methods.base import Learner
from taskshare.methods.lifelong import EWC, ExpertPerTask, Finetune, Joint, LwF
from taskshare.methods.par import PAR
from taskshare.methods.patches import Patches, PatchesMultiTask, patch_methods
from taskshare.methods.taps import Taps, TapsJoint, TapsTwoStage

METHODS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (Finetune, EWC, LwF, ExpertPerTask, Joint, Patches, PatchesMultiTask,
                              Taps, TapsJoint, TapsTwoStage, PAR)}
# the per-kind names: head, scale-bias+head, depthwise+head, scale-bias+depthwise+head, bias+head, full
PATCH_ALIASES = patch_methods()
METHODS.update(PATCH_ALIASES)


def method_options() -> dict[str, type]:
    """Section name -> options dataclass, for config validation."""
    return {name: cls.Options for name, cls in METHODS.items()}


__all__ = ["METHODS", "PATCH_ALIASES", "Learner", "method_options"]
