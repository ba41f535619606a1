"""``biossl compare SUITE``: a suite of (rule × objective × encoder) cells under one budget,
one set of seeds and the shared probe protocol, written as markdown, CSV and a plot.

A suite is a YAML file (the packaged ones: ``biossl/configs/suites/``)::

    name: fmnist-quick
    seeds: [0]
    common: [train.epochs=1, eval.max_train=10000]   # overrides for every cell
    cells:
      - {label: e2e-bp, config: fmnist-bp-hinge}
      - {label: gll-urf, config: fmnist-bp-hinge, overrides: [rule.name=gll, rule.feedback=urf]}

Each (cell, seed) trains into ``OUT/cells/LABEL-sSEED`` and records ``result.json`` there;
a finished cell is read back, never re-run, and an interrupted one resumes from its
checkpoint. The random-init encoder is probed once per distinct (encoder, views, seed).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from biossl.assemble import resolve_device
from biossl.bench import peak_bytes, reset_peak
from biossl.checkpoint import write_text_atomic
from biossl.config import (SUITES_DIR, ConfigError, RunConfig, apply_overrides, build_config, from_dict,
                           load_raw)
from biossl.registry import OBJECTIVES, SCHEDULES, TRANSPORTS
from biossl.rules.base import CONDITION_TEXT, CONDITIONS, plausibility
from biossl.rundir import RUN_CONFIG, config_changes, load_run_config, save_run_config


@dataclass
class Cell:
    label: str
    """Row name in the table."""
    config: str
    """Recipe: a YAML path, a file next to the suite, or a packaged recipe name."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of this cell (after the suite's common ones)."""


@dataclass
class Suite:
    name: str
    """Suite name (the default output folder results/NAME)."""
    cells: list[Cell]
    """The rows of the comparison."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Every cell runs once per seed; the table reports mean ± std."""
    common: list[str] = field(default_factory=list)
    """Overrides applied to every cell: the shared budget and protocol."""
    path: Path | None = None
    """The suite file (set by :func:`load_suite`); a user's suite finds its cells' recipes
    next to it first, then among the packaged recipes."""
    description: str = ""
    """What the suite reproduces and what it needs (data, device)."""
    transfer: list[str] = field(default_factory=list)
    """Datasets every cell's frozen encoder (and each random-init row) is also probed on,
    per stage; images of another shape are resized to the training shape (eval.resize)."""


def find_suite(name: str) -> Path:
    """A suite YAML path, or the name of a packaged suite (``biossl list``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if (SUITES_DIR / f"{name}.yaml").is_file():
        return SUITES_DIR / f"{name}.yaml"
    known = sorted(q.stem for q in SUITES_DIR.glob("*.yaml"))
    raise ConfigError(f"suite {name!r} not found; known suites: {', '.join(known)} (or give a YAML path)")


def load_suite(name: str) -> Suite:
    path = find_suite(name)
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    suite = from_dict(Suite, raw, "suite")
    suite.path = path.resolve()
    return suite


def cell_recipe(suite: Suite, cell: Cell) -> str | Path:
    """Where a cell's recipe is read: next to a user's suite file (never the suite itself),
    else as given (a YAML path or a packaged recipe name). Packaged suites use the
    packaged recipes, which share some names with the suites."""
    if suite.path is not None and suite.path.parent != SUITES_DIR.resolve():
        folder = suite.path.parent
        for cand in (folder / cell.config, folder / f"{cell.config}.yaml"):
            if cand.is_file() and cand.resolve() != suite.path:
                return cand
    return cell.config


def cell_config(suite: Suite, cell: Cell, seed: int) -> RunConfig:
    raw = load_raw(cell_recipe(suite, cell))
    raw["name"] = cell.label
    cfg = build_config(apply_overrides(raw, suite.common + cell.overrides + [f"train.seed={seed}"]))
    return cfg


RANDOM_INIT_KEYS = ("data.", "views.", "encoder.", "eval.", "train.seed")
"""What a random-init row depends on (its config is borrowed from the family's first cell)."""


def check_same_config(cfg: RunConfig, cell_dir: Path, only: tuple[str, ...] | None = None) -> None:
    """A cell directory is reused (finished or resumed) only for the config it was run with:
    after a recipe or suite edit its stored result would silently describe another run.
    ``only``: compare just the keys starting with these prefixes."""
    if not (cell_dir / RUN_CONFIG).is_file():
        return
    changes = config_changes(load_run_config(cell_dir), cfg)
    changed = [k for k in changes if only is None or k.startswith(only)]
    if changed:
        shown = ", ".join(f"{k}: {changes[k][0]!r} → {changes[k][1]!r}" for k in changed[:6])
        more = f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ConfigError(f"{cell_dir} was run with another config ({shown}{more}); delete that "
                          f"directory to re-run the cell, or give the suite another --out")


def _stage_results(rows: list) -> dict:
    """Per-stage probe / kNN / few-label lists of one encoder's probe rows."""
    label = rows[0].encoder_label
    mine = [r for r in rows if r.encoder_label == label]
    return {"probe": [r.probe for r in mine], "knn": [r.knn for r in mine],
            "few_label": [r.few_label for r in mine]}


def add_transfer(res: dict, cell_dir: Path, datasets: list[str], trained: bool) -> bool:
    """Probe the cell's encoder on each transfer dataset it lacks; True when ``res`` grew.
    Computed after the fact, so adding a transfer dataset to a suite never retrains a cell."""
    from biossl.run_eval import evaluate_run
    grew = False
    for ds in datasets:
        if ds in res.setdefault("transfer", {}):
            continue
        rows = evaluate_run(cell_dir, [f"eval.dataset={ds}"] + (["eval.random_init=false"] if trained else []),
                            trained=trained)
        res["transfer"][ds] = {**_stage_results(rows), "protocol": rows[0].protocol}
        grew = True
    return grew


def run_cell(cfg: RunConfig, cell_dir: Path, trained: bool = True, transfer: list[str] = ()) -> dict:
    """Train (or resume) and probe one cell (also on each ``transfer`` dataset); returns and
    stores its result."""
    from biossl.run_eval import evaluate_run
    from biossl.train import train  # looked up per call (tests replace it)
    result_path = cell_dir / "result.json"
    check_same_config(cfg, cell_dir, None if trained else RANDOM_INIT_KEYS)
    if result_path.is_file():
        res = json.loads(result_path.read_text())
        if add_transfer(res, cell_dir, list(transfer), trained):
            write_text_atomic(json.dumps(res, indent=1), result_path)
        return res
    device = resolve_device(cfg.train.device)
    base = reset_peak(device)
    t0 = time.time()
    summary = {}
    if trained:
        # a cell killed before its first checkpoint has only config.yaml: resume restarts it
        summary = train(cfg, cell_dir, resume=(cell_dir / RUN_CONFIG).is_file())
    else:
        cell_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, cell_dir)
    peak = max(0, peak_bytes(device) - base) / 2**20
    # the suite probes random-init encoders once per (encoder, views, seed), not per cell
    rows = evaluate_run(cell_dir, ["eval.random_init=false"] if trained else [], trained=trained)
    res = {"label": cfg.name, "seed": cfg.train.seed, "rule": cfg.rule_name() if trained else "none",
           "objective": cfg.objective.name if trained else "—", "encoder": cfg.encoder.name,
           "views": cfg.views.name,
           **_stage_results(rows),
           "protocol": rows[0].protocol,
           "images_seen": summary.get("steps", 0) * cfg.train.batch_size,
           "train_seconds": summary.get("train_seconds", 0.0),
           "images_per_s": summary.get("images_per_s", float("nan")),
           "peak_mib": peak, "wall_seconds": time.time() - t0}
    add_transfer(res, cell_dir, list(transfer), trained)
    write_text_atomic(json.dumps(res, indent=1), result_path)
    return res


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(m: float, s: float, seeds: int) -> str:
    if math.isnan(m):
        return "—"
    return f"{m:.1f} ± {s:.1f}" if seeds > 1 else f"{m:.1f}"


def summarize(groups: dict[str, list[dict]], plaus: dict[str, dict]) -> list[dict]:
    out = []
    for label, results in groups.items():
        n_stages = len(results[0]["probe"])
        row = {"label": label, "rule": results[0]["rule"], "objective": results[0]["objective"],
               "encoder": results[0]["encoder"], "views": results[0]["views"], "seeds": len(results)}
        for metric in ("probe", "knn", "few_label"):
            for s in range(n_stages):
                row[f"{metric}_s{s + 1}"] = _mean_std([r[metric][s] for r in results])
        for ds in results[0].get("transfer", {}):
            for metric in ("probe", "knn"):
                for s in range(n_stages):
                    row[f"transfer_{ds}_{metric}_s{s + 1}"] = _mean_std(
                        [r["transfer"][ds][metric][s] for r in results if ds in r.get("transfer", {})])
        for k in ("train_seconds", "images_per_s", "peak_mib", "images_seen"):
            row[k] = _mean_std([float(r[k]) for r in results])[0]
        for ds, t in results[0].get("transfer", {}).items():
            row[f"transfer_{ds}_protocol"] = t.get("protocol", "")
        row["plausible"] = plaus.get(label, {})
        row["n_stages"] = n_stages
        out.append(row)
    return out


def random_label(encoder: str, views: str) -> str:
    """Label of the random-init row of a family (same encoder and views)."""
    return f"random-init ({encoder}, {views})"


def random_key(row: dict) -> str:
    """Label of the random-init row a cell is compared with."""
    return random_label(row["encoder"], row["views"])


def top_gain(row: dict, rows: list[dict]) -> float:
    """Top-stage linear probe minus its random-init row's (points); NaN without that row."""
    ref = next((r for r in rows if r["label"] == random_key(row)), None)
    if ref is None or row["rule"] == "none":
        return float("nan")
    return row[f"probe_s{row['n_stages']}"][0] - ref[f"probe_s{ref['n_stages']}"][0]


def plausible_verdict(rows: list[dict]) -> str:
    """One line: which fully plausible rows (all four conditions) beat their random-init row."""
    full = [r for r in rows if r["plausible"] and all(r["plausible"].get(c) for c in CONDITIONS)]
    if not full:
        return "No row meets all four plausibility conditions."
    gains = [(r["label"], top_gain(r, rows)) for r in full]
    ahead = [label for label, g in gains if g > 0]
    behind = [f"{label} ({g:+.1f})" for label, g in gains if not g > 0]
    return (f"Rows meeting all four conditions (i)–(iv) that beat their random-init row on the "
            f"top-stage linear probe: {len(ahead)} of {len(full)}"
            + (f"; not: {', '.join(behind)}." if behind else "."))


def format_markdown(suite: Suite, rows: list[dict], protocols: list[str]) -> str:
    stages = max(r["n_stages"] for r in rows)
    head = ["cell", "rule", "objective"] + [f"probe s{s}" for s in range(1, stages + 1)] + \
        ["Δ top vs random", "kNN top", "100/class top", "images seen", "train s", "img/s",
         "peak MiB", "(i)-(iv)"]
    lines = [f"# {suite.name}", "", suite.description.strip(), "",
             f"Seeds: {suite.seeds}. Common overrides: `{' '.join(suite.common)}`.", "",
             "Protocol: " + " | ".join(protocols) + ".", "",
             "Probe = linear probe test accuracy (%) on each stage's global-average-pooled output; "
             "Δ top vs random = top-stage probe minus that of the random-init row with the same "
             "encoder and views; kNN and 100/class on the top stage. (i)-(iv): Bio-SSL plausibility conditions met "
             "(✓) or not (✗), for the rule with this objective: "
             + "; ".join(f"({c}) {CONDITION_TEXT[c]}" for c in CONDITIONS) + ". Peak MiB: growth of the process's "
             "peak resident memory during the cell (training and probing; the allocator reuses "
             "memory across cells, so compare rules with `biossl bench`, not with this column).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(suite.seeds)
    for r in rows:
        top = r["n_stages"]
        cells = [r["label"], r["rule"], r["objective"]]
        cells += [_fmt(*r[f"probe_s{s}"], n) if s <= top else "" for s in range(1, stages + 1)]
        gain = top_gain(r, rows)
        cells += ["—" if math.isnan(gain) else f"{gain:+.1f}"]
        cells += [_fmt(*r[f"knn_s{top}"], n), _fmt(*r[f"few_label_s{top}"], n),
                  f"{r['images_seen']:.0f}", f"{r['train_seconds']:.0f}",
                  "—" if math.isnan(r["images_per_s"]) else f"{r['images_per_s']:.0f}",
                  f"{r['peak_mib']:.0f}",
                  "".join("✓" if r["plausible"].get(c) else "✗" for c in CONDITIONS) if r["plausible"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", plausible_verdict(rows)]
    for ds in suite.transfer:
        lines += [""] + transfer_markdown(ds, rows, stages, n)
    return "\n".join(lines) + "\n"


def transfer_markdown(ds: str, rows: list[dict], stages: int, seeds: int) -> list[str]:
    """Table lines: every row's frozen encoder probed on ``ds`` per stage, Δ vs its random row."""
    key = f"transfer_{ds}_probe_s"
    protocol = next((p for p in (r.get(f"transfer_{ds}_protocol") for r in rows) if p), "")
    head = ["cell"] + [f"{ds} probe s{s}" for s in range(1, stages + 1)] + ["Δ top vs random", f"{ds} kNN top"]
    lines = [f"## Transfer: linear probe on {ds}", "",
             f"The same frozen encoders, probed on `{ds}`" + (f" ({protocol})" if protocol else "") + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        top = r["n_stages"]
        if f"{key}{top}" not in r:
            continue
        ref = next((x for x in rows if x["label"] == random_key(r)), None)
        gain = (float("nan") if ref is None or r["rule"] == "none" or f"{key}{ref['n_stages']}" not in ref
                else r[f"{key}{top}"][0] - ref[f"{key}{ref['n_stages']}"][0])
        cells = [r["label"]] + [_fmt(*r[f"{key}{s}"], seeds) if s <= top else "" for s in range(1, stages + 1)]
        cells += ["—" if math.isnan(gain) else f"{gain:+.1f}", _fmt(*r[f"transfer_{ds}_knn_s{top}"], seeds)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "plausible"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + [f"cond_{c}" for c in CONDITIONS])
        for r in rows:
            vals = []
            for k in keys:
                v = r.get(k, "")
                vals += [f"{v[0]:.3f}±{v[1]:.3f}" if isinstance(v, tuple) else v]
            w.writerow(vals + [r["plausible"].get(c, "") for c in CONDITIONS])


def plot(rows: list[dict], path: Path, title: str) -> None:
    """One panel per view recipe (each family has its own random-init row, drawn dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = sorted({r["views"] for r in rows})
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 4.8), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, fam in zip(axes[0], families):
        mine = [r for r in rows if r["views"] == fam]
        for k, r in enumerate(mine):
            xs = list(range(1, r["n_stages"] + 1))
            ys = [r[f"probe_s{s}"][0] for s in xs]
            err = [r[f"probe_s{s}"][1] for s in xs]
            if r["rule"] == "none":
                ax.errorbar(xs, ys, yerr=err, fmt="k--", lw=2.5, label=r["label"], capsize=3)
            else:
                ax.errorbar(xs, ys, yerr=err, fmt="-o", color=cmap(k % 20), label=r["label"],
                            capsize=3, markersize=4)
        ax.set_xticks(xs)
        ax.set_xlabel("stage")
        ax.set_ylabel("linear probe accuracy (%)")
        ax.set_title(f"{title} — views: {fam}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_suite(suite: Suite, out: Path, progress: bool = True) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    plaus: dict[str, dict] = {}
    randoms: dict[str, tuple[RunConfig, list[int]]] = {}
    protocols: list[str] = []
    plan = [(c, s) for c in suite.cells for s in suite.seeds]
    for i, (cell, seed) in enumerate(plan):
        cfg = cell_config(suite, cell, seed)
        cell_dir = out / "cells" / f"{cell.label}-s{seed}"
        state = "finished" if (cell_dir / "result.json").is_file() else "running"
        if progress:
            print(f"[{i + 1}/{len(plan)}] {cell.label} seed {seed}: {state}", flush=True)
        res = run_cell(cfg, cell_dir, transfer=suite.transfer)
        if res["protocol"] not in protocols:
            protocols.append(res["protocol"])
        groups.setdefault(cell.label, []).append(res)
        plaus[cell.label] = plausibility(SCHEDULES.get(cfg.schedule.name).factory,
                                         TRANSPORTS.get(cfg.transport.name).factory,
                                         OBJECTIVES.get(cfg.objective.name).factory, cfg.objective.params)
        key = random_label(cfg.encoder.name, cfg.views.name)
        seeds = randoms.setdefault(key, (cfg, []))[1]
        if seed not in seeds:
            seeds.append(seed)
    for key, (cfg, seeds) in randoms.items():
        for seed in seeds:
            rcfg = build_config(apply_overrides(cfg.to_dict(), [f"train.seed={seed}", f"name={key}"]))
            rdir = out / "cells" / f"random-init-{cfg.encoder.name}-{cfg.views.name}-s{seed}"
            if progress:
                print(f"[random] {key} seed {seed}: "
                      f"{'finished' if (rdir / 'result.json').is_file() else 'running'}", flush=True)
            groups.setdefault(key, []).append(run_cell(rcfg, rdir, trained=False, transfer=suite.transfer))
    rows = summarize(groups, plaus)
    for r in rows:
        r["top_gain_vs_random"] = top_gain(r, rows)
    rows.sort(key=lambda r: (r["rule"] != "none", r["label"]))
    write_text_atomic(format_markdown(suite, rows, protocols), out / "results.md")
    write_csv(rows, out / "results.csv")
    plot(rows, out / "results.png", f"{suite.name}: per-stage linear probe")
    return rows


def main(args) -> int:
    suite = load_suite(args.suite)
    if args.seeds:
        suite = dataclasses.replace(suite, seeds=list(args.seeds))
    out = Path(args.out or Path("results") / suite.name)
    run_suite(suite, out)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, results.csv, results.png")
    return 0
