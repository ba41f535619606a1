"""An action corpus biossl makes itself: Fashion-MNIST objects moving on textured
backgrounds, one labelled action per clip, deterministic from a seed.

Each clip shows one Fashion-MNIST image (its class is the clip's second label) pasted
on a static procedural texture (:mod:`biossl.data.video.textures`) and moving with one
of :data:`ACTIONS` at a constant rate through the clip:

- translate right / left / up / down: the centre travels 0.4–0.7 of the half-width
  (0.2–0.35 of the frame side), crossing the starting point at mid-clip;
- rotate clockwise / counter-clockwise (as seen on screen): 90°–180° over the clip;
- zoom in / out: the size grows / shrinks by a factor 1.6–2.2 over the clip;
- static: nothing moves (successive frames are identical).

Every clip also gets a random base position, size and tilt, so the action is told by
the motion, not by a pose. The object's own intensity is its opacity (×3, clipped), so
dark parts inside an object still cover the background.

Rendering is batched: all poses of a chunk of clips become one (clips × frames, 2, 3)
affine matrix, one ``affine_grid`` and one ``grid_sample`` (bilinear) place the objects.
The train split draws its objects from Fashion-MNIST's train images and the test split
from its test images, so test clips show unseen object instances. Object classes and
actions are balanced; all random draws come from one generator seeded by (seed, split).
Clips are cached as a uint8 store in the user cache (``…/biossl/fashion-actions``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from biossl.data.locate import cache_dir
from biossl.data.video.clipset import ClipSet
from biossl.data.video.spec import VideoSpec
from biossl.data.video.store import StoreWriter, cache_key, read_store
from biossl.data.video.textures import textures
from biossl.seeds import hash63

ACTIONS = ("static", "translate-right", "translate-left", "translate-up", "translate-down",
           "rotate-cw", "rotate-ccw", "zoom-in", "zoom-out")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
GENERATOR_VERSION = 1
"""Bumped whenever rendering changes, so stale caches are not reused."""

# Per action: centre direction (x right, y down), spin (+1 clockwise on screen), zoom sign.
_DIRECTION = torch.tensor([[0, 0], [1, 0], [-1, 0], [0, -1], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]],
                          dtype=torch.float32)
_SPIN = torch.tensor([0, 0, 0, 0, 0, 1, -1, 0, 0], dtype=torch.float32)
_ZOOM = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, -1], dtype=torch.float32)
FRAMES_PER_CHUNK = 8192
"""Frames rendered per batched grid_sample (bounds the float working memory)."""


@dataclass
class FashionActionsConfig:
    side: int = 32
    """Frame side in pixels (frames are side×side, one gray channel)."""
    frames: int = 16
    """Frames per clip."""
    train_per_class: int = 150
    """Train clips per action class (objects from Fashion-MNIST train images)."""
    test_per_class: int = 40
    """Test clips per action class (objects from Fashion-MNIST test images)."""
    object_size: float = 0.5
    """The 28×28 object image spans this fraction of the frame side at mid-clip (before
    the per-clip ±10 % jitter)."""
    texture_contrast: float = 0.5
    """Brightest background value (fraction of white): a random grey level plus the
    texture, scaled by this; 0 gives a black background."""
    seed: int = 0
    """Every random draw follows from (seed, split): same seed, identical bytes."""

    def validate(self) -> None:
        if self.side < 8:
            raise ValueError(f"fashion-actions side must be ≥ 8 pixels, got {self.side}")
        if self.frames < 2:
            raise ValueError(f"fashion-actions frames must be ≥ 2 (an action needs motion), got {self.frames}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise ValueError(f"fashion-actions train_per_class and test_per_class must be ≥ 1, got "
                             f"{self.train_per_class}, {self.test_per_class}")
        if not 0.1 <= self.object_size <= 1.0:
            raise ValueError(f"fashion-actions object_size must lie in [0.1, 1], got {self.object_size}")
        if not 0.0 <= self.texture_contrast <= 1.0:
            raise ValueError(f"fashion-actions texture_contrast must lie in [0, 1], got {self.texture_contrast}")

    def clips_per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.test_per_class


def split_generator(seed: int, split: str) -> torch.Generator:
    """The generator for (seed, split): independent streams for train and test."""
    return torch.Generator().manual_seed(hash63(f"fashion-actions/{split}/{seed}"))


@dataclass
class Plan:
    """Every random choice of a split, drawn up front (so chunking cannot change them)."""

    actions: Tensor      # int64 (N,)
    image_idx: Tensor    # int64 (N,) into the Fashion-MNIST split
    objects: Tensor      # int64 (N,) the images' classes
    center: Tensor       # float (N, 2) mid-clip centre, canvas units ([-1, 1] per axis)
    angle: Tensor        # float (N,) mid-clip tilt, radians
    scale: Tensor        # float (N,) mid-clip half-size of the object image, canvas units
    travel: Tensor       # float (N,) translation over the clip
    turn: Tensor         # float (N,) rotation over the clip, radians
    zoom: Tensor         # float (N,) size ratio end / start
    background: Tensor   # float (N, 1, S, S) in [0, 1]


def plan_clips(cfg: FashionActionsConfig, split: str, image_labels: Tensor) -> Plan:
    """Draw the actions, objects, poses, motions and backgrounds of ``split``'s clips."""
    g = split_generator(cfg.seed, split)
    per_class = cfg.clips_per_class(split)
    n = per_class * len(ACTIONS)
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)  # noqa: E731
    actions = (torch.arange(n) // per_class)[torch.randperm(n, generator=g)]
    objects = (torch.arange(n) % len(FASHION_CLASSES))[torch.randperm(n, generator=g)]
    image_idx = torch.empty(n, dtype=torch.int64)
    for k in range(len(FASHION_CLASSES)):  # a loop over classes: each gets distinct images
        pool = torch.nonzero(image_labels == k).flatten()
        want = torch.nonzero(objects == k).flatten()
        if not pool.numel():
            raise ValueError(f"fashion-actions: no Fashion-MNIST {split} image of class {k}")
        order = pool[torch.randperm(pool.numel(), generator=g)]
        image_idx[want] = order[torch.arange(want.numel()) % pool.numel()]
    center = u(-0.1, 0.1, n, 2)
    angle = u(-math.pi / 12, math.pi / 12)
    scale = cfg.object_size * u(0.9, 1.1)
    travel, turn, zoom = u(0.4, 0.7), u(math.pi / 2, math.pi), u(1.6, 2.2)
    tex, _ = textures(n, cfg.side, g)
    # A random grey level plus the texture, both scaled by the contrast: at most that bright.
    low, amp = u(0.0, 0.3).view(n, 1, 1, 1), u(0.5, 0.7).view(n, 1, 1, 1)
    background = cfg.texture_contrast * (low + amp * tex)
    return Plan(actions, image_idx, objects, center, angle, scale, travel, turn, zoom, background)


def poses(plan: Plan, idx: Tensor, frames: int) -> Tensor:
    """Affine matrices (n, frames, 2, 3) mapping canvas coordinates to object-image
    coordinates (what ``affine_grid`` takes) for clips ``idx`` of ``plan``."""
    a = plan.actions[idx]
    t = torch.linspace(-0.5, 0.5, frames).view(1, frames)  # clip time, 0 at mid-clip
    centre = plan.center[idx, None, :] + (_DIRECTION[a] * plan.travel[idx, None])[:, None, :] * t[..., None]
    angle = plan.angle[idx, None] + (_SPIN[a] * plan.turn[idx])[:, None] * t
    scale = plan.scale[idx, None] * plan.zoom[idx, None] ** (_ZOOM[a][:, None] * t)
    # A point u of the object image appears at p = centre + scale · R(angle) u, with R
    # turning +x towards +y (down): clockwise on screen. affine_grid needs the inverse.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(−a)/s
    shift = -(inv @ centre[..., None])
    return torch.cat([inv, shift], -1)


def render(plan: Plan, images: Tensor, idx: Tensor, cfg: FashionActionsConfig) -> Tensor:
    """uint8 (n, frames, 1, side, side): clips ``idx`` of ``plan``; ``images`` uint8 (M, 1, 28, 28)."""
    n, t, s = idx.numel(), cfg.frames, cfg.side
    obj = images[plan.image_idx[idx]].float() / 255
    src = torch.cat([obj, (obj * 3).clamp(max=1)], 1)  # (n, 2: intensity, opacity, 28, 28)
    src = src[:, None].expand(n, t, *src.shape[1:]).reshape(n * t, *src.shape[1:])
    theta = poses(plan, idx, t).reshape(n * t, 2, 3)
    grid = F.affine_grid(theta, [n * t, 2, s, s], align_corners=False)
    placed = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    value, alpha = placed.view(n, t, 2, s, s).unbind(2)
    bg = plan.background[idx]  # (n, 1, s, s), the same in every frame
    out = alpha * value + (1 - alpha) * bg
    return (out * 255).round().clamp(0, 255).to(torch.uint8).unsqueeze(2)


def generate(cfg: FashionActionsConfig, split: str, images: Tensor, image_labels: Tensor,
             writer: StoreWriter | None = None) -> tuple[Plan, Tensor | None]:
    """Render every clip of ``split`` → (plan, uint8 (N, T, 1, S, S)); with ``writer`` the
    clips are streamed into it instead and None is returned in their place."""
    plan = plan_clips(cfg, split, image_labels)
    n = plan.actions.numel()
    chunk = max(1, FRAMES_PER_CHUNK // cfg.frames)
    out = None if writer else torch.empty((n, cfg.frames, 1, cfg.side, cfg.side), dtype=torch.uint8)
    with tqdm(total=n, desc=f"fashion-actions {split}", unit="clip", disable=None) as bar:
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(n, s + chunk))
            clips = render(plan, images, idx, cfg)
            if writer:
                writer.add(clips)
            else:
                out[s:s + idx.numel()] = clips  # type: ignore[index]
            bar.update(idx.numel())
    return plan, out


class FashionActions(VideoSpec):
    """Fashion-MNIST objects moving on textures: 9 actions, object class as second label."""

    name = "fashion-actions"
    num_classes = len(ACTIONS)
    Config = FashionActionsConfig

    def _load(self, split: str, root: Path | None, download: bool, cfg: FashionActionsConfig) -> ClipSet:
        # The key leaves out the Fashion-MNIST files: the corpus assumes the official ones,
        # and a cache hit then needs no Fashion-MNIST read at all.
        key = cache_key(version=GENERATOR_VERSION, split=split, **asdict(cfg))
        stem = f"{split}-{cfg.side}px-{cfg.frames}f-{key}"
        store_dir = cache_dir(self.name)
        stored = read_store(store_dir, stem)
        if stored is None:
            from biossl.data import load_dataset  # imported here: the image registry imports a lot

            fm = load_dataset("fashion-mnist", split, root=root, download=download)
            with StoreWriter(store_dir, stem, (1, cfg.side, cfg.side)) as writer:
                plan, _ = generate(cfg, split, fm.images, fm.labels, writer)
                writer.commit({"labels": plan.actions.tolist(), "objects": plan.objects.tolist(),
                               "image_idx": plan.image_idx.tolist(), "config": asdict(cfg),
                               "version": GENERATOR_VERSION, "fashion_mnist": fm.source})
            stored = read_store(store_dir, stem)
            assert stored is not None, "a store just written must read back"
        frames, offsets, meta, data = stored
        return ClipSet(frames, offsets, torch.tensor(meta["labels"], dtype=torch.int64), ACTIONS,
                       self.name, split, objects=torch.tensor(meta["objects"], dtype=torch.int64),
                       object_names=FASHION_CLASSES, source=str(data))
