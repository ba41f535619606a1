"""Objective registry: each entry is ``factory(cfg, in_shape) -> Objective``."""
from biossl.objectives.base import Objective, ProjectionHead
from biossl.objectives.hinge import HingeObjective, hinge_error, hinge_loss
from biossl.objectives.ntxent import NTXentObjective, ntxent_loss
from biossl.registry import OBJECTIVES

OBJECTIVES.register("hinge", HingeObjective, summary="Bio-SSL contrastive hinge on L1 distances")
OBJECTIVES.register("ntxent", NTXentObjective, summary="SimCLR NT-Xent (not plausible: normalisation, softmax)")
from biossl.objectives.clapp import ClappObjective  # noqa: E402
from biossl.objectives.infonce import InfoNCEObjective  # noqa: E402
OBJECTIVES.register("clapp", ClappObjective, summary="CLAPP predictive hinge (saccade grids or pairs), W_pred/W_retro")
OBJECTIVES.register("infonce", InfoNCEObjective, summary="CPC/GIM InfoNCE over patch predictions (not plausible: softmax)")

__all__ = ["Objective", "ProjectionHead", "hinge_loss", "hinge_error", "ntxent_loss"]
