"""The per-stage evaluation table: run the protocol, then write it as CSV, markdown, PNG.

One :class:`ProbeRow` per (encoder, stage). Stages are numbered from 1 (bottom) to L
(top), as in the papers' "stage i = 1…L". The random-init encoder is just another
call of :func:`evaluate_encoder` with label "random-init" (same protocol, same seed).
With frame labels (speech: phones per 10 ms) every stage also gets a frame-level probe
(:mod:`biossl.evaluate.frames`) while the pooled probes read the sample's label (speech:
the speaker); :func:`evaluate_mfcc` probes the MFCC baseline of waveform datasets the
same way, as one stage.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from biossl.encoders.base import StageStack
from biossl.evaluate.features import _encoder_device, extract_features, standardize
from biossl.evaluate.frames import (StageFn, extract_stage_features, frame_probe, frame_protocol,
                                    select_frames)
from biossl.evaluate.knn import KNN_TEMPERATURE, knn_accuracy
from biossl.evaluate.mfcc import mfcc_stages
from biossl.evaluate.probe import PROBE_BATCH, few_label_epochs, few_label_probe, linear_probe
from biossl.views.base import ViewRecipe

if TYPE_CHECKING:  # the probe protocol's settings; evaluate itself does not depend on config
    from biossl.config import EvalConfig


@dataclass
class ProbeRow:
    encoder_label: str
    """Which encoder, e.g. 'trained' or 'random-init'."""
    stage: int
    """Stage number, 1 = bottom."""
    dim: int
    """Feature dimension C of the pooled stage output."""
    probe: float
    """Linear-probe test accuracy (%), all train labels."""
    knn: float
    """Cosine kNN test accuracy (%)."""
    few_label: float
    """Few-label linear-probe test accuracy (%); NaN when disabled or too few labels."""
    protocol: str
    """How these numbers were measured (pooling, epochs, label counts)."""
    per_class: int = 100
    """Labels per class of the few-label probe."""
    frames: float = float("nan")
    """Frame-level linear probe accuracy (%) (speech: phones per 10 ms); NaN without frame labels."""


def has_frames(rows: Sequence[ProbeRow]) -> bool:
    """True when some row carries a frame-level probe (its tables then show the column)."""
    return any(not math.isnan(r.frames) for r in rows)


def protocol_string(cfg: EvalConfig, pooling: str, n_train: int, n_test: int,
                    num_classes: int, few_ok: bool) -> str:
    """Names the pooling, probe budget and label counts of one evaluation."""
    parts = [f"{pooling}, standardized (train stats)",
             f"linear: Adam {cfg.probe_lr:g}, {cfg.probe_epochs} ep, batch {PROBE_BATCH}, "
             f"{n_train} labels",
             f"kNN: k={cfg.knn_k} cosine, exp(sim/{KNN_TEMPERATURE:g}) vote"]
    if cfg.few_labels > 0 and few_ok:
        n_few = cfg.few_labels * num_classes
        parts.append(f"few-label: {cfg.few_labels}/class = {n_few} labels, "
                     f"{few_label_epochs(n_train, n_few, cfg.probe_epochs)} ep")
    elif cfg.few_labels > 0:
        parts.append(f"few-label: skipped (a class has < {cfg.few_labels} train labels)")
    parts.append(f"test {n_test}")
    return "; ".join(parts)


def limit_splits(cfg: EvalConfig, train_images: Tensor, train_labels: Tensor, train_frames: Tensor | None,
           test_images: Tensor, test_labels: Tensor, test_frames: Tensor | None):
    """``cfg.max_train`` / ``cfg.max_test``: the first N samples of each split (and their frames)."""
    if cfg.max_train is not None:
        train_images, train_labels = train_images[:cfg.max_train], train_labels[:cfg.max_train]
        train_frames = train_frames[:cfg.max_train] if train_frames is not None else None
    if cfg.max_test is not None:
        test_images, test_labels = test_images[:cfg.max_test], test_labels[:cfg.max_test]
        test_frames = test_frames[:cfg.max_test] if test_frames is not None else None
    return train_images, train_labels, train_frames, test_images, test_labels, test_frames


def _probe_stages(label: str, train_f: list[Tensor], test_f: list[Tensor], train_labels: Tensor,
                  test_labels: Tensor, cfg: EvalConfig, num_classes: int, device: torch.device,
                  seed: int, pooling: str) -> list[ProbeRow]:
    """The pooled probes (linear, kNN, few-label) of every stage's (N, C_s) features."""
    counts = torch.bincount(train_labels.cpu().long(), minlength=num_classes)
    few_ok = cfg.few_labels > 0 and bool((counts >= cfg.few_labels).all())
    protocol = protocol_string(cfg, pooling, len(train_labels), len(test_labels), num_classes, few_ok)
    ytr, yte = train_labels.to(device).long(), test_labels.to(device).long()
    rows = []
    for s, (a, b) in enumerate(zip(train_f, test_f), start=1):
        a, b = standardize(a.to(device), b.to(device))
        probe = linear_probe(a, ytr, b, yte, num_classes, cfg.probe_epochs, cfg.probe_lr, seed=seed)
        knn = knn_accuracy(a, ytr, b, yte, k=cfg.knn_k, num_classes=num_classes)
        few = (few_label_probe(a, ytr, b, yte, num_classes, cfg.few_labels, cfg.probe_epochs,
                               cfg.probe_lr, seed=seed) if few_ok else float("nan"))
        rows.append(ProbeRow(label, s, a.shape[1], probe, knn, few, protocol, cfg.few_labels))
    return rows


def evaluate_encoder(encoder: StageStack, label: str, train_images: Tensor, train_labels: Tensor,
                     test_images: Tensor, test_labels: Tensor, recipe: ViewRecipe,
                     cfg: EvalConfig, num_classes: int, device: torch.device | str | None = None,
                     seed: int = 0, progress: bool = True, *, train_frames: Tensor | None = None,
                     test_frames: Tensor | None = None, frame_classes: int = 0,
                     frame_name: str = "frame") -> list[ProbeRow]:
    """Run the standard protocol on every stage of a frozen ``encoder``.

    train_images (N, C, H, W) uint8 with train_labels (N,); test likewise. ``cfg.max_train``
    / ``cfg.max_test`` keep the first N images of each split. Features are pooled
    (GAP; grid recipes also average over the patch grid), standardised with train
    statistics, then probed on ``device`` (default: the encoder's device).
    With ``train_frames`` / ``test_frames`` (int64 (N, F), −1 = unknown; e.g. speech
    waveforms (N, 1, T) with phones per 10 ms) and ``frame_classes`` > 0, every stage also
    gets the frame-level probe of :func:`evaluate_stages` (the recipe's evaluation input
    must then be one sequence per sample, 'plain' or 'sequence', and every stage output (n, C, T_s)).
    Returns one :class:`ProbeRow` per stage, bottom to top.
    """
    device = torch.device(device) if device is not None else _encoder_device(encoder)
    if train_frames is not None and test_frames is not None and frame_classes > 0:
        def stages(xb: Tensor) -> list[Tensor]:
            vb = recipe.eval_batch(xb.to(device, non_blocking=True))
            if vb.kind not in ("plain", "sequence"):
                raise ValueError(f"frame probe: the view recipe's evaluation input is {vb.kind!r}; "
                                 f"frame labels need one 'plain' sequence per sample")
            return encoder(vb.x)
        was_training = encoder.training
        encoder.eval()
        try:
            return evaluate_stages(stages, label, train_images, train_labels, train_frames, test_images,
                                   test_labels, test_frames, cfg, num_classes, frame_classes, device,
                                   seed, progress, frame_name=frame_name)
        finally:
            encoder.train(was_training)
    train_images, train_labels, _, test_images, test_labels, _ = limit_splits(
        cfg, train_images, train_labels, None, test_images, test_labels, None)
    # One image tells how the recipe feeds evaluation ('plain' or a patch 'grid').
    kind = recipe.eval_batch(train_images[:1].to(device)).kind
    pooling = "GAP over patch grid" if kind == "grid" else "GAP"
    kw = dict(batch_size=cfg.batch_size, device=device, progress=progress)
    train_f = extract_features(encoder, train_images, recipe, desc=f"{label} train", **kw)
    test_f = extract_features(encoder, test_images, recipe, desc=f"{label} test", **kw)
    return _probe_stages(label, train_f, test_f, train_labels, test_labels, cfg, num_classes, device,
                         seed, pooling)


def evaluate_stages(stages: StageFn, label: str, train_x: Tensor, train_labels: Tensor,
                    train_frames: Tensor | None, test_x: Tensor, test_labels: Tensor,
                    test_frames: Tensor | None, cfg: EvalConfig, num_classes: int, frame_classes: int,
                    device: torch.device | str = "cpu", seed: int = 0, progress: bool = True,
                    pooling: str = "GAP over time", frame_name: str = "frame") -> list[ProbeRow]:
    """The protocol for any ``stages`` (samples (n, …) on the CPU → [(n, C_s, T_s)] per stage).

    Per stage: the pooled probes of the sample labels (as :func:`evaluate_encoder`, on the
    time average) and, with frame labels (int64 (N, F), −1 unknown) and ``frame_classes`` > 0,
    the frame probe: each stage output adaptive-average-pooled to the F label frames
    (:func:`~biossl.evaluate.frames.frame_pool`), frames labelled −1 dropped, at most
    ``cfg.max_frames`` labelled frames per split (seeded by ``seed``), standardised with
    train statistics, a linear probe scored as frame accuracy (%) on the test split.
    One forward pass per batch; features live on the CPU, probes run on ``device``.
    """
    device = torch.device(device)
    with_frames = train_frames is not None and test_frames is not None and frame_classes > 0
    if not with_frames:
        train_frames = test_frames = None
    train_x, train_labels, train_frames, test_x, test_labels, test_frames = limit_splits(
        cfg, train_x, train_labels, train_frames, test_x, test_labels, test_frames)
    sel_tr = sel_te = None
    if with_frames:
        if train_frames.shape[1] != test_frames.shape[1]:
            raise ValueError(f"frame probe: train has {train_frames.shape[1]} frames per sample, "
                             f"test {test_frames.shape[1]}")
        sel_tr = select_frames(train_frames, cfg.max_frames, seed)
        sel_te = select_frames(test_frames, cfg.max_frames, seed + 1)
        if sel_tr.numel() == 0 or sel_te.numel() == 0:
            raise ValueError(f"frame probe: no labelled frames in the "
                             f"{'train' if sel_tr.numel() == 0 else 'test'} split (all frame labels are −1)")
    kw = dict(batch_size=cfg.batch_size, progress=progress)
    tr = extract_stage_features(stages, train_x, train_frames, sel_tr, desc=f"{label} train", **kw)
    te = extract_stage_features(stages, test_x, test_frames, sel_te, desc=f"{label} test", **kw)
    rows = _probe_stages(label, tr.pooled, te.pooled, train_labels, test_labels, cfg, num_classes,
                         device, seed, pooling)
    if not with_frames:
        return rows
    frames_text = frame_protocol(frame_name, train_frames.shape[1], sel_tr.numel(), sel_te.numel(),
                                 cfg.probe_epochs, cfg.probe_lr, cfg.max_frames)
    for s, row in enumerate(rows):
        row.frames = frame_probe(tr.frames[s], tr.frame_y, te.frames[s], te.frame_y, frame_classes,
                                 cfg.probe_epochs, cfg.probe_lr, seed, device)
        row.protocol = f"{row.protocol}; {frames_text}"
        tr.frames[s] = te.frames[s] = None  # each stage's frames are freed once probed
    return rows


def evaluate_mfcc(label: str, train_x: Tensor, train_labels: Tensor, test_x: Tensor, test_labels: Tensor,
                  cfg: EvalConfig, num_classes: int, device: torch.device | str = "cpu", seed: int = 0,
                  progress: bool = True, *, train_frames: Tensor | None = None,
                  test_frames: Tensor | None = None, frame_classes: int = 0,
                  frame_name: str = "frame") -> list[ProbeRow]:
    """The MFCC baseline (:mod:`biossl.evaluate.mfcc`) of int16 waveforms (N, 1, T) as one stage
    (13 MFCCs per 10 ms) through :func:`evaluate_stages`: the pooled probes on its time average,
    the frame probe when frame labels are given. Returns one :class:`ProbeRow` (stage 1)."""
    return evaluate_stages(mfcc_stages, label, train_x, train_labels, train_frames, test_x, test_labels,
                           test_frames, cfg, num_classes, frame_classes, device, seed, progress,
                           pooling="MFCC (13, librosa, 25 ms window, 10 ms hop), mean over time",
                           frame_name=frame_name)


# --------------------------------------------------------------------------- outputs
def write_csv(rows: Sequence[ProbeRow], path: str | Path) -> Path:
    """One line per row, columns = the ProbeRow fields ('frames' only when a row has it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(ProbeRow)]
    if not has_frames(rows):
        names.remove("frames")
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dataclasses.asdict(r))
    return path


def _pct(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.2f}"


def format_table(rows: Sequence[ProbeRow], frame_name: str = "frame") -> str:
    """Markdown table (encoder, stage, dim, linear probe, kNN, N/class, and '<frame_name> probe'
    when a row has a frame probe), then the protocol(s)."""
    per = {r.per_class for r in rows}
    n = per.pop() if len(per) == 1 else None
    few = "few-label" if n is None else (f"{n}/class" if n > 0 else "few-label (off)")
    frames = has_frames(rows)
    extra = f" {frame_name} probe |" if frames else ""
    lines = [f"| encoder | stage | dim | linear probe | kNN | {few} |{extra}",
             "|---|---|---|---|---|---|" + ("---|" if frames else "")]
    for r in rows:
        lines.append(f"| {r.encoder_label} | {r.stage} | {r.dim} | {_pct(r.probe)} | "
                     f"{_pct(r.knn)} | {_pct(r.few_label)} |" + (f" {_pct(r.frames)} |" if frames else ""))
    protocols = list(dict.fromkeys(r.protocol for r in rows))
    if len(protocols) == 1:
        lines += ["", f"Protocol: {protocols[0]}"]
    else:
        lines += [""] + [f"Protocol ({', '.join(sorted({r.encoder_label for r in rows if r.protocol == p}))}): {p}"
                         for p in protocols]
    return "\n".join(lines)


def plot_rows(rows: Sequence[ProbeRow], path: str | Path, frame_name: str = "frame") -> Path:
    """PNG of accuracy (%) against stage: one line per (encoder label, metric).

    Colour = metric, line style = encoder; a metric that is NaN on every stage of an encoder
    (few-label off, no frame labels) is left out. Uses the Agg canvas directly, so no global
    matplotlib backend is switched and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    metrics = [("probe", "linear probe", "C0"), ("knn", "kNN", "C1"),
               ("few_label", "few-label", "C2"), ("frames", f"{frame_name} probe", "C3")]
    styles = ["-", "--", ":", "-."]
    labels = list(dict.fromkeys(r.encoder_label for r in rows))
    for li, lab in enumerate(labels):
        sub = sorted((r for r in rows if r.encoder_label == lab), key=lambda r: r.stage)
        for attr, name, color in metrics:
            ys = [getattr(r, attr) for r in sub]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot([r.stage for r in sub], ys, styles[li % len(styles)], color=color,
                    marker="o", label=f"{lab}: {name}")
    ax.set_xlabel("stage")
    ax.set_ylabel("test accuracy (%)")
    stages = sorted({r.stage for r in rows})
    ax.set_xticks(stages)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
