"""Dataset sources: readers of the official file formats, file lookup/download/verify.

Every dataset is a :class:`DatasetSpec` subclass registered in
:data:`biossl.registry.DATASETS` under its name, with the class as factory.
"""
from __future__ import annotations

from pathlib import Path

from biossl.data.base import DatasetError, DatasetSpec, ImageSet
from biossl.data.cifar import CIFAR10, CIFAR100
from biossl.data.digits import Digits
from biossl.data.idx import MNIST, FashionMNIST
from biossl.data.speech.sources import EspeakSpeechLarge, EspeakSpeechSegments, LibriSpeechSegments
from biossl.data.stl10 import STL10
from biossl.data.video.sources import FashionActionsClips, FashionActionsObjects, UCF101Clips
from biossl.registry import DATASETS

DATASETS.register("fashion-mnist", FashionMNIST,
                  summary="Fashion-MNIST: 28×28 gray, 10 classes, 60k train / 10k test")
DATASETS.register("mnist", MNIST, summary="MNIST digits: 28×28 gray, 10 classes, 60k train / 10k test")
DATASETS.register("cifar10", CIFAR10, summary="CIFAR-10: 32×32 colour, 10 classes, 50k train / 10k test")
DATASETS.register("cifar100", CIFAR100,
                  summary="CIFAR-100: 32×32 colour, 100 fine classes, 50k train / 10k test")
DATASETS.register("stl10", STL10,
                  summary="STL-10: 96×96 colour, 10 classes, 5k train / 8k test / 100k unlabeled (SSL)")
DATASETS.register("digits", Digits, summary="sklearn digits: 8×8 gray, 10 classes, 1500 train / 297 test")
DATASETS.register("espeak-speech", EspeakSpeechSegments,
                  summary="speech made with espeak-ng: 20 voices, 1.6 s segments, 72 phones / 10 ms (generated once)")
DATASETS.register("espeak-speech-large", EspeakSpeechLarge,
                  summary="speech made with espeak-ng: 60 voices × 120 sentences, 1.6 s segments (generated once)")
DATASETS.register("librispeech", LibriSpeechSegments,
                  summary="LibriSpeech train-clean-100 + CPC/GIM splits and phones: 251 speakers, 41 phones, 1.6 s segments")
DATASETS.register("fashion-actions", FashionActionsClips,
                  summary="Fashion-MNIST objects moving on textures: 16 frames 32×32 gray, 9 actions (generated once)")
DATASETS.register("fashion-actions-objects", FashionActionsObjects,
                  summary="the fashion-actions clips labelled by their object's Fashion-MNIST class (10)")
DATASETS.register("ucf101", UCF101Clips,
                  summary="UCF-101 fold 1: 101 actions, 48 frames (every 3rd) of 128×128 RGB per clip")


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (KeyError listing the registered names if unknown)."""
    return DATASETS.build(name)


def load_dataset(name: str, split: str, root: str | Path | None = None,
                 download: bool = True) -> ImageSet:
    """Read ``split`` of dataset ``name`` → ImageSet (images uint8 (N, C, H, W), labels int64 (N,))."""
    return get_spec(name).load(split, root=root, download=download)


__all__ = ["DatasetError", "DatasetSpec", "ImageSet", "get_spec", "load_dataset",
           "FashionMNIST", "MNIST", "CIFAR10", "CIFAR100", "STL10", "Digits"]
