"""The typed results of a suite (``biossl compare``), built from the probe's ProbeRows.

A :class:`CellResult` is one (cell, seed): its encoder's ProbeRows per stage, on the
training dataset and on each transfer dataset, plus what training it cost. A
:class:`SuiteRow` is one line of the suite's table: a label's results over its seeds,
read as mean ± std. The tables, the CSV and the plot read SuiteRows; the file formats
(``result.json``, ``results.csv``) are produced and read at their edges only.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from biossl.evaluate import ProbeRow, has_frames
from biossl.naming import UNTRAINED

METRICS = ("probe", "knn", "few_label")
"""The ProbeRow accuracies a suite records per stage."""
FRAME_METRIC = "frames"
"""The frame-level probe (speech: phones), recorded per stage only where a row has it."""


@dataclass
class CellResult:
    """One (cell, seed) of a suite: trained (or random-init) encoder, probed per stage."""
    label: str
    """The cell's label (the table row it belongs to)."""
    seed: int
    """The run's train.seed."""
    rule: str
    """The rule that trained the encoder; ``naming.UNTRAINED`` for a random-init row."""
    objective: str
    """The objective it trained with ('—' for a random-init row)."""
    encoder: str
    """Encoder name (a random-init row is compared with cells of the same encoder and views)."""
    views: str
    """View recipe name."""
    rows: list[ProbeRow]
    """One ProbeRow per stage, bottom to top, on the training dataset."""
    transfer: dict[str, list[ProbeRow]] = field(default_factory=dict)
    """Per transfer dataset, one ProbeRow per stage of the same frozen encoder."""
    images_seen: int = 0
    """Images the SSL training consumed (steps × batch size)."""
    train_seconds: float = 0.0
    """Time in training steps."""
    images_per_s: float = float("nan")
    """Training throughput; NaN for a random-init row."""
    peak_mib: float = 0.0
    """Growth of the process's peak memory during the cell (biossl.measure)."""
    wall_seconds: float = 0.0
    """Wall clock of the whole cell: training and probing."""

    @property
    def trained(self) -> bool:
        return self.rule != UNTRAINED

    @property
    def protocol(self) -> str:
        return self.rows[0].protocol

    # ------------------------------------------------------------------ result.json
    def to_json(self) -> dict:
        """``result.json``: per-metric lists over the stages (the format users read)."""
        out = {"label": self.label, "seed": self.seed, "rule": self.rule, "objective": self.objective,
               "encoder": self.encoder, "views": self.views, **_stage_lists(self.rows),
               "images_seen": self.images_seen, "train_seconds": self.train_seconds,
               "images_per_s": self.images_per_s, "peak_mib": self.peak_mib,
               "wall_seconds": self.wall_seconds}
        if self.transfer:
            out["transfer"] = {ds: _stage_lists(rows) for ds, rows in self.transfer.items()}
        return out

    @classmethod
    def from_json(cls, d: dict) -> CellResult:
        """Read :meth:`to_json`'s dict (also files written before ``dim`` was recorded)."""
        costs = {k: d[k] for k in ("images_seen", "train_seconds", "images_per_s", "peak_mib",
                                   "wall_seconds") if k in d}
        return cls(d["label"], d["seed"], d["rule"], d["objective"], d["encoder"], d["views"],
                   _stage_rows(d, d.get("encoder_label", d["label"])),
                   {ds: _stage_rows(t, d.get("encoder_label", d["label"]))
                    for ds, t in d.get("transfer", {}).items()}, **costs)


def _stage_lists(rows: list[ProbeRow]) -> dict:
    frames = {FRAME_METRIC: [r.frames for r in rows]} if has_frames(rows) else {}
    return {"encoder_label": rows[0].encoder_label, "dim": [r.dim for r in rows],
            **{m: [getattr(r, m) for r in rows] for m in METRICS}, **frames,
            "protocol": rows[0].protocol, "per_class": rows[0].per_class}


def _stage_rows(d: dict, encoder_label: str) -> list[ProbeRow]:
    n = len(d["probe"])
    dims = d.get("dim", [0] * n)  # 0: not recorded by older versions
    rows = [ProbeRow(encoder_label, s + 1, dims[s], d["probe"][s], d["knn"][s], d["few_label"][s],
                     d.get("protocol", ""), d.get("per_class", 100)) for s in range(n)]
    for r, v in zip(rows, d.get(FRAME_METRIC, [])):  # absent: no frame labels (the default NaN)
        r.frames = v
    return rows


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds, NaNs left out; (NaN, NaN) when nothing is left."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass
class SuiteRow:
    """One row of a suite's table: the results of one label over its seeds."""
    label: str
    """Cell label, or the random-init row's label."""
    results: list[CellResult]
    """One result per seed (the first one names the rule, objective, encoder and views)."""
    plausible: dict[str, bool] = field(default_factory=dict)
    """Bio-SSL plausibility conditions observed by ``biossl audit`` for the row's config; empty: not rated."""

    @property
    def first(self) -> CellResult:
        return self.results[0]

    @property
    def rule(self) -> str:
        return self.first.rule

    @property
    def objective(self) -> str:
        return self.first.objective

    @property
    def encoder(self) -> str:
        return self.first.encoder

    @property
    def views(self) -> str:
        return self.first.views

    @property
    def trained(self) -> bool:
        return self.first.trained

    @property
    def seeds(self) -> int:
        return len(self.results)

    @property
    def n_stages(self) -> int:
        return len(self.first.rows)

    @property
    def has_frames(self) -> bool:
        """True when some seed's result has a frame-level probe on the training dataset."""
        return any(has_frames(r.rows) for r in self.results)

    @property
    def transfer_datasets(self) -> list[str]:
        """The transfer datasets of the first seed's result (the table's columns)."""
        return list(self.first.transfer)

    def protocol(self, dataset: str | None = None) -> str:
        """The probe protocol of the first seed, on the training or a transfer dataset."""
        rows = self.first.rows if dataset is None else self.first.transfer.get(dataset)
        return rows[0].protocol if rows else ""

    def stat(self, metric: str, stage: int, dataset: str | None = None) -> tuple[float, float]:
        """Mean ± std over seeds of ``metric`` (a ProbeRow field) at ``stage`` (1 = bottom),
        on the training dataset or on transfer ``dataset`` (seeds that have it)."""
        if dataset is None:
            rows = [r.rows for r in self.results]
        else:
            rows = [r.transfer[dataset] for r in self.results if dataset in r.transfer]
        return mean_std([getattr(rs[stage - 1], metric) for rs in rows])

    def top(self, metric: str = "probe", dataset: str | None = None) -> tuple[float, float]:
        return self.stat(metric, self.n_stages, dataset)

    def mean(self, cost: str) -> float:
        """Mean over seeds of a CellResult cost field (images_seen, train_seconds, …)."""
        return mean_std([float(getattr(r, cost)) for r in self.results])[0]


def group_rows(groups: dict[str, list[CellResult]], plaus: dict[str, dict]) -> list[SuiteRow]:
    """One SuiteRow per label, in the order of ``groups``."""
    return [SuiteRow(label, results, plaus.get(label, {})) for label, results in groups.items()]
