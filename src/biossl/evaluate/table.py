"""The per-stage evaluation table: run the protocol, then write it as CSV, markdown, PNG.

One :class:`ProbeRow` per (encoder, stage). Stages are numbered from 1 (bottom) to L
(top), as in the papers' "stage i = 1…L". The random-init encoder is just another
call of :func:`evaluate_encoder` with label "random-init" (same protocol, same seed).
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
from biossl.evaluate.knn import KNN_TEMPERATURE, knn_accuracy
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


def evaluate_encoder(encoder: StageStack, label: str, train_images: Tensor, train_labels: Tensor,
                     test_images: Tensor, test_labels: Tensor, recipe: ViewRecipe,
                     cfg: EvalConfig, num_classes: int, device: torch.device | str | None = None,
                     seed: int = 0, progress: bool = True) -> list[ProbeRow]:
    """Run the standard protocol on every stage of a frozen ``encoder``.

    train_images (N, C, H, W) uint8 with train_labels (N,); test likewise. ``cfg.max_train``
    / ``cfg.max_test`` keep the first N images of each split. Features are pooled
    (GAP; grid recipes also average over the patch grid), standardised with train
    statistics, then probed on ``device`` (default: the encoder's device).
    Returns one :class:`ProbeRow` per stage, bottom to top.
    """
    device = torch.device(device) if device is not None else _encoder_device(encoder)
    if cfg.max_train is not None:
        train_images, train_labels = train_images[:cfg.max_train], train_labels[:cfg.max_train]
    if cfg.max_test is not None:
        test_images, test_labels = test_images[:cfg.max_test], test_labels[:cfg.max_test]
    # One image tells how the recipe feeds evaluation ('plain' or a patch 'grid').
    kind = recipe.eval_batch(train_images[:1].to(device)).kind
    pooling = "GAP over patch grid" if kind == "grid" else "GAP"
    counts = torch.bincount(train_labels.cpu().long(), minlength=num_classes)
    few_ok = cfg.few_labels > 0 and bool((counts >= cfg.few_labels).all())
    protocol = protocol_string(cfg, pooling, len(train_labels), len(test_labels), num_classes, few_ok)

    kw = dict(batch_size=cfg.batch_size, device=device, progress=progress)
    train_f = extract_features(encoder, train_images, recipe, desc=f"{label} train", **kw)
    test_f = extract_features(encoder, test_images, recipe, desc=f"{label} test", **kw)
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


# --------------------------------------------------------------------------- outputs
def write_csv(rows: Sequence[ProbeRow], path: str | Path) -> Path:
    """One line per row, columns = the ProbeRow fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(ProbeRow)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(dataclasses.asdict(r))
    return path


def _pct(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.2f}"


def format_table(rows: Sequence[ProbeRow]) -> str:
    """Markdown table (encoder, stage, dim, linear probe, kNN, N/class), then the protocol(s)."""
    per = {r.per_class for r in rows}
    n = per.pop() if len(per) == 1 else None
    few = "few-label" if n is None else (f"{n}/class" if n > 0 else "few-label (off)")
    lines = [f"| encoder | stage | dim | linear probe | kNN | {few} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.encoder_label} | {r.stage} | {r.dim} | {_pct(r.probe)} | "
                     f"{_pct(r.knn)} | {_pct(r.few_label)} |")
    protocols = list(dict.fromkeys(r.protocol for r in rows))
    if len(protocols) == 1:
        lines += ["", f"Protocol: {protocols[0]}"]
    else:
        lines += [""] + [f"Protocol ({', '.join(sorted({r.encoder_label for r in rows if r.protocol == p}))}): {p}"
                         for p in protocols]
    return "\n".join(lines)


def plot_rows(rows: Sequence[ProbeRow], path: str | Path) -> Path:
    """PNG of accuracy (%) against stage: one line per (encoder label, metric).

    Colour = metric, line style = encoder. Uses the Agg canvas directly, so no global
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
               ("few_label", "few-label", "C2")]
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
