"""View recipes (how positive pairs are made); each is one ``VIEWS.register`` line.

A recipe is ``Recipe(cfg: Recipe.Config, image_shape: (C, H, W))`` and is called as
``recipe(x_uint8 (N, C, H, W), generator) -> ViewBatch``.
"""
from biossl.registry import VIEWS
from biossl.views.audio import AudioCrops
from biossl.views.base import ViewRecipe, to_float
from biossl.views.clips import ClipBlocks
from biossl.views.batch import ViewBatch
from biossl.views.recipes import DeformViews, NoViews, SimCLRViews
from biossl.views.saccades import SaccadeViews

VIEWS.register("deform", DeformViews)
VIEWS.register("simclr", SimCLRViews)
VIEWS.register("none", NoViews)
VIEWS.register("saccades", SaccadeViews, summary="CLAPP/GIM saccades: grayscale patch grid (kind grid)")
VIEWS.register("audio-crops", AudioCrops, summary="GIM audio: one random 1.28 s crop per segment on the 10 ms grid (kind sequence)")
VIEWS.register("clip-blocks", ClipBlocks, summary="video: blocks of consecutive frames from a random start, one crop + flip per clip (kind sequence)")

__all__ = ["VIEWS", "ViewRecipe", "ViewBatch", "to_float",
           "DeformViews", "SimCLRViews", "NoViews", "SaccadeViews", "AudioCrops", "ClipBlocks"]
