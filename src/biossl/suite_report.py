"""A suite's outputs from its SuiteRows: the markdown table (with the plausibility verdict
and one transfer table per transfer dataset), the CSV and the per-stage plot.

Where some row has a frame-level probe (speech: phones per 10 ms), the table gains one
'<frame_name> s{n}' column per stage, the CSV 'frames_s{n}' columns and the plot a second
row of panels; without one, the outputs are exactly those of image suites."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from biossl.rules.base import CONDITION_TEXT, CONDITIONS
from biossl.evaluate import MFCC_LABEL
from biossl.suite_result import FRAME_METRIC, METRICS, SuiteRow

if TYPE_CHECKING:
    from biossl.compare import Suite


def random_label(encoder: str, views: str) -> str:
    """Label of the random-init row of a family (same encoder and views)."""
    return f"random-init ({encoder}, {views})"


def random_key(row: SuiteRow) -> str:
    """Label of the random-init row a cell is compared with."""
    return random_label(row.encoder, row.views)


def _reference(row: SuiteRow, rows: list[SuiteRow]) -> SuiteRow | None:
    return next((r for r in rows if r.label == random_key(row)), None)


def top_gain(row: SuiteRow, rows: list[SuiteRow], dataset: str | None = None) -> float:
    """Top-stage linear probe minus its random-init row's (points), on the training dataset
    or a transfer ``dataset``; NaN without that row (or its transfer result)."""
    ref = _reference(row, rows)
    if ref is None or not row.trained:
        return float("nan")
    if dataset is not None and dataset not in ref.transfer_datasets:
        return float("nan")
    return row.top("probe", dataset)[0] - ref.top("probe", dataset)[0]


def plausible_verdict(rows: list[SuiteRow]) -> str:
    """One line: which fully plausible rows (all four conditions) beat their random-init row."""
    full = [r for r in rows if r.plausible and all(r.plausible.get(c) for c in CONDITIONS)]
    if not full:
        return "No row meets all four plausibility conditions."
    gains = [(r.label, top_gain(r, rows)) for r in full]
    ahead = [label for label, g in gains if g > 0]
    behind = [f"{label} ({g:+.1f})" for label, g in gains if not g > 0]
    return (f"Rows meeting all four conditions (i)–(iv) that beat their random-init row on the "
            f"top-stage linear probe: {len(ahead)} of {len(full)}"
            + (f"; not: {', '.join(behind)}." if behind else "."))


def _fmt(stat: tuple[float, float], seeds: int) -> str:
    m, s = stat
    if math.isnan(m):
        return "—"
    return f"{m:.1f} ± {s:.1f}" if seeds > 1 else f"{m:.1f}"


def _gain(g: float) -> str:
    return "—" if math.isnan(g) else f"{g:+.1f}"


def format_markdown(suite: Suite, rows: list[SuiteRow], protocols: list[str],
                    frame_name: str = "frame") -> str:
    """The suite's table; ``frame_name`` heads the frame-probe columns ('phone s1', …)."""
    stages = max(r.n_stages for r in rows)
    frames = any(r.has_frames for r in rows)
    frame_cols = [f"{frame_name} s{s}" for s in range(1, stages + 1)] if frames else []
    few = next((r.first.rows[0].per_class for r in rows if r.results and r.first.rows), 100)
    head = ["cell", "rule", "objective"] + [f"probe s{s}" for s in range(1, stages + 1)] + frame_cols + \
        ["Δ top vs random", "kNN top", f"{few}/class top", "images seen", "train s", "img/s",
         "peak MiB", "(i)-(iv)"]
    lines = [f"# {suite.name}", "", suite.description.strip(), "",
             f"Seeds: {suite.seeds}. Common overrides: `{' '.join(suite.common)}`.", "",
             "Protocol: " + " | ".join(protocols) + ".", "",
             "Probe = linear probe test accuracy (%) on each stage's global-average-pooled output; "
             "Δ top vs random = top-stage probe minus that of the random-init row with the same "
             f"encoder and views; kNN and {few}/class on the top stage. (i)-(iv): Bio-SSL plausibility conditions met "
             "(✓) or not (✗), as `biossl audit` observed them in one instrumented step of the cell's config "
             "(evidence: audit.json in the cell's directory; docs/audit.md): "
             + "; ".join(f"({c}) {CONDITION_TEXT[c]}" for c in CONDITIONS) + ". Peak MiB: growth of the process's "
             "peak resident memory during the cell (training and probing; the allocator reuses "
             "memory across cells, so compare rules with `biossl bench`, not with this column)."
             + (f" With frame labels, probe/kNN/{few}/class read each sample's label (speech: the speaker) "
                f"and {frame_name} s1… are the frame-level linear probe accuracy (%): each stage's output "
                f"average-pooled to the label frames (one {frame_name} per frame)."
                + (f" The {MFCC_LABEL} row: 13 MFCCs per 10 ms (librosa), probed as one stage."
                   if any(r.label == MFCC_LABEL for r in rows) else "") if frames else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(suite.seeds)
    for r in rows:
        cells = [r.label, r.rule, r.objective]
        cells += [_fmt(r.stat("probe", s), n) if s <= r.n_stages else "" for s in range(1, stages + 1)]
        if frames:
            cells += [_fmt(r.stat(FRAME_METRIC, s), n) if s <= r.n_stages else "" for s in range(1, stages + 1)]
        cells += [_gain(top_gain(r, rows))]
        ips = r.mean("images_per_s")
        cells += [_fmt(r.top("knn"), n), _fmt(r.top("few_label"), n),
                  f"{r.mean('images_seen'):.0f}", f"{r.mean('train_seconds'):.0f}",
                  "—" if math.isnan(ips) else f"{ips:.0f}", f"{r.mean('peak_mib'):.0f}",
                  "".join("✓" if r.plausible.get(c) else "✗" for c in CONDITIONS) if r.plausible else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", plausible_verdict(rows)]
    for ds in suite.transfer:
        lines += [""] + transfer_markdown(ds, rows, stages, n)
    return "\n".join(lines) + "\n"


def transfer_markdown(ds: str, rows: list[SuiteRow], stages: int, seeds: int) -> list[str]:
    """Table lines: every row's frozen encoder probed on ``ds`` per stage, Δ vs its random row."""
    protocol = next((p for p in (r.protocol(ds) for r in rows) if p), "")
    head = ["cell"] + [f"{ds} probe s{s}" for s in range(1, stages + 1)] + ["Δ top vs random", f"{ds} kNN top"]
    lines = [f"## Transfer: linear probe on {ds}", "",
             f"The same frozen encoders, probed on `{ds}`" + (f" ({protocol})" if protocol else "") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if ds not in r.transfer_datasets:
            continue
        cells = [r.label] + [_fmt(r.stat("probe", s, ds), seeds) if s <= r.n_stages else ""
                             for s in range(1, stages + 1)]
        cells += [_gain(top_gain(r, rows, ds)), _fmt(r.top("knn", ds), seeds)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- CSV
def csv_record(row: SuiteRow, rows: list[SuiteRow] = ()) -> dict:
    """The CSV columns of one row (names as ``results.csv`` has always had them); ``rows``:
    the suite's rows, where its random-init reference is."""
    stages = range(1, row.n_stages + 1)
    rec = {"label": row.label, "rule": row.rule, "objective": row.objective, "encoder": row.encoder,
           "views": row.views, "seeds": row.seeds}
    for metric in METRICS + ((FRAME_METRIC,) if row.has_frames else ()):
        rec.update({f"{metric}_s{s}": row.stat(metric, s) for s in stages})
    for ds in row.transfer_datasets:
        for metric in ("probe", "knn"):
            rec.update({f"transfer_{ds}_{metric}_s{s}": row.stat(metric, s, ds) for s in stages})
    for cost in ("train_seconds", "images_per_s", "peak_mib", "images_seen"):
        rec[cost] = row.mean(cost)
    for ds in row.transfer_datasets:
        rec[f"transfer_{ds}_protocol"] = row.protocol(ds)
    rec["n_stages"] = row.n_stages
    rec["top_gain_vs_random"] = top_gain(row, rows)
    return rec


def write_csv(rows: list[SuiteRow], path: Path) -> None:
    """One line per row: mean±std cells for the accuracies, then the four conditions."""
    records = [csv_record(r, rows) for r in rows]
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + [f"cond_{c}" for c in CONDITIONS])
        for row, rec in zip(rows, records):
            vals = []
            for k in keys:
                v = rec.get(k, "")
                vals += [f"{v[0]:.3f}±{v[1]:.3f}" if isinstance(v, tuple) else v]
            w.writerow(vals + [row.plausible.get(c, "") for c in CONDITIONS])


# --------------------------------------------------------------------------- plot
def plot(rows: list[SuiteRow], path: Path, title: str, frame_name: str = "frame") -> None:
    """One panel per view recipe (each family has its own random-init row, drawn dashed; the
    MFCC baseline, if any, is a dotted level line in every panel); with frame probes, a second
    row of panels shows them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    def is_shared(r: SuiteRow) -> bool:
        return r.label == MFCC_LABEL and not r.trained
    shared = [r for r in rows if is_shared(r)]
    families = sorted({r.views for r in rows if not is_shared(r)})
    metrics = [("probe", "linear probe accuracy (%)", "")]
    if any(r.has_frames for r in rows):
        metrics.append((FRAME_METRIC, f"{frame_name} probe accuracy (%)", f" ({frame_name})"))
    fig, axes = plt.subplots(len(metrics), len(families), figsize=(6.5 * len(families), 4.8 * len(metrics)),
                             squeeze=False)
    cmap = plt.get_cmap("tab20")
    for (metric, ylabel, suffix), ax_row in zip(metrics, axes):
        for ax, fam in zip(ax_row, families):
            mine = [r for r in rows if r.views == fam and not is_shared(r)]
            for k, r in enumerate(mine + shared):
                xs = list(range(1, r.n_stages + 1))
                ys, err = zip(*(r.stat(metric, s) for s in xs))
                if is_shared(r):   # one feature set, not a stack: a level line across the stages
                    ax.axhline(ys[-1], ls=":", color="0.4", lw=2, label=r.label)
                elif not r.trained:
                    ax.errorbar(xs, ys, yerr=err, fmt="k--", lw=2.5, label=r.label, capsize=3)
                else:
                    ax.errorbar(xs, ys, yerr=err, fmt="-o", color=cmap(k % 20), label=r.label,
                                capsize=3, markersize=4)
            ax.set_xticks(range(1, max(r.n_stages for r in mine) + 1))
            ax.set_xlabel("stage")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}{suffix} — views: {fam}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
