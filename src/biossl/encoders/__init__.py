"""Encoder registry: each entry is ``factory(cfg, in_channels) -> StageStack``."""
from biossl.encoders.base import StageStack
from biossl.encoders.conv6 import conv6
from biossl.encoders.convstack import convstack
from biossl.encoders.gim_audio import gim_audio
from biossl.encoders.vgg6 import vgg6
from biossl.encoders.vgg8_video import vgg8_video
from biossl.registry import ENCODERS

ENCODERS.register("convstack", convstack, summary="small conv stack for 28×28 data (32/64/128, max-pool)")
ENCODERS.register("conv6", conv6, summary="Bio-SSL CIFAR net: 5 convs, Hardtanh, 512×4×4 top")
ENCODERS.register("vgg6", vgg6, summary="CLAPP STL-10 net: 6 VGG stages, ReLU, no batch norm")
ENCODERS.register("gim-audio", gim_audio, summary="GIM/CLAPP audio net: 5 strided Conv1d stages (160×: 10 ms frames), optional GRU")
ENCODERS.register("vgg8-video", vgg8_video, summary="CLAPP video net (VGG-8): 5 Conv3d stages, frame-wise then temporal (stride = kernel 3), no batch norm")

__all__ = ["StageStack", "ENCODERS"]
