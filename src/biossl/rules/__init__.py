"""Rule registry: each entry is ``factory(cfg, encoder, make_objective, train) -> Rule``."""
from biossl.registry import RULES
from biossl.rules.base import Rule
from biossl.rules.bp import BP, E2ERandomFeedback, E2ESignFeedback, E2EUpdatedRandomFeedback
from biossl.rules.dtp import DTP
from biossl.rules.layerwise import GLL, RLL
from biossl.rules.local import LayerLocal

RULES.register("bp", BP, summary="end-to-end back-propagation (baseline)")
RULES.register("rf", E2ERandomFeedback, summary="end-to-end with fixed random feedback B (feedback alignment)")
RULES.register("fa", E2ERandomFeedback, summary="alias of rf (feedback alignment)")
RULES.register("urf", E2EUpdatedRandomFeedback, summary="end-to-end with updated random feedback (ΔB = ΔW)")
RULES.register("sign", E2ESignFeedback, summary="end-to-end with sign(B) random feedback")
RULES.register("gll", GLL, summary="greedy layer-wise: stage by stage, own head, one-step error (bp/rf/urf/sign)")
RULES.register("rll", RLL, summary="random layer-wise: one uniformly drawn stage per minibatch (bp/rf/urf/sign)")
RULES.register("dtp", DTP, summary="difference target propagation: stage targets from learned inverses")
RULES.register("clapp", LayerLocal, summary="layer-local simultaneous (CLAPP): own loss + optimizer per stage, mode autograd|explicit")
RULES.register("gim", LayerLocal, summary="alias of clapp (Greedy InfoMax = layer-local rule + infonce objective)")

__all__ = ["Rule", "RULES"]
