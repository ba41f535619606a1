"""Video sources: :class:`ClipSet` (clips of uint8 frames with action labels), the UCF-101
reader and the generated Fashion-MNIST action corpus.

Each source is a :class:`VideoSpec` subclass with ``load(split, root=None, download=False,
**sizes) -> ClipSet``; none is registered in :data:`biossl.registry.DATASETS` here.
"""
from biossl.data.video.actions import ACTIONS, FASHION_CLASSES, FashionActions, FashionActionsConfig
from biossl.data.video.clipset import ClipSet
from biossl.data.video.spec import VideoSpec
from biossl.data.video.ucf101 import UCF101, UCF101Config

__all__ = ["ClipSet", "VideoSpec", "UCF101", "UCF101Config", "FashionActions", "FashionActionsConfig",
           "ACTIONS", "FASHION_CLASSES"]
