"""``biossl compare SUITE``: a suite of (rule × objective × encoder) cells under one budget,
one set of seeds and the shared probe protocol, written as markdown, CSV and a plot.

A suite is a YAML file (the packaged ones: ``biossl/configs/suites/``)::

    name: fmnist-quick
    seeds: [0]
    common: [train.epochs=1, eval.max_train=10000]   # overrides for every cell
    cells:
      - {label: e2e-bp, config: fmnist-bp-hinge}
      - {label: gll-urf, config: fmnist-bp-hinge, overrides: [schedule.name=greedy, transport.name=urf]}

Each (cell, seed) trains into ``OUT/cells/LABEL-sSEED`` and records ``result.json`` there;
a finished cell is read back, never re-run, and an interrupted one resumes from its
checkpoint. The random-init encoder is probed once per distinct (encoder, views, seed).
When a cell probes waveforms (speech, samples (1, T)) and ``eval.mfcc`` is on, the suite
adds one MFCC baseline row (``mfcc``, per seed; it depends on no encoder).

A cell's result is a typed :class:`~biossl.suite_result.CellResult` (the probe's ProbeRows
per stage); the rows of the table are :class:`~biossl.suite_result.SuiteRow` (a label over
its seeds), written by :mod:`biossl.suite_report`. compare calls the trainer's and the
probe's entry points (``train``, ``evaluate_run``) and shares nothing else with them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from biossl.assemble import resolve_device
from biossl.checkpoint import write_text_atomic
from biossl.config import (SUITES_DIR, ConfigError, RunConfig, apply_overrides, build_config, from_dict,
                           load_raw)
from biossl.data import get_spec
from biossl.evaluate import MFCC_LABEL, is_waveform
from biossl.measure import peak_bytes, reset_peak
from biossl.naming import RANDOM_INIT, UNTRAINED, rule_name
from biossl.rundir import RUN_CONFIG, config_changes, load_run_config, save_run_config
from biossl.suite_report import format_markdown, plot, random_label, write_csv
from biossl.suite_result import CellResult, SuiteRow, group_rows


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
MFCC_KEYS = ("data.", "eval.", "train.seed")
"""What the MFCC row depends on (its config is borrowed from the first waveform cell)."""
def probes_waveforms(cfg: RunConfig) -> bool:
    """True when ``cfg`` probes a waveform dataset (samples (1, T)) with ``eval.mfcc`` on."""
    return cfg.eval.mfcc and is_waveform(tuple(get_spec(cfg.eval.dataset or cfg.data.name).image_shape))


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


def add_transfer(res: CellResult, cell_dir: Path, datasets: list[str], trained: bool) -> bool:
    """Probe the cell's encoder on each transfer dataset it lacks; True when ``res`` grew.
    Computed after the fact, so adding a transfer dataset to a suite never retrains a cell."""
    from biossl.run_eval import evaluate_run
    grew = False
    for ds in datasets:
        if ds in res.transfer:
            continue
        rows = evaluate_run(cell_dir, [f"eval.dataset={ds}"] + (["eval.random_init=false"] if trained else []),
                            trained=trained, baselines=() if trained else (RANDOM_INIT,))
        res.transfer[ds] = rows  # one encoder: baselines are explicit
        grew = True
    return grew


def run_cell(cfg: RunConfig, cell_dir: Path, trained: bool = True, transfer: list[str] = (),
             baseline: str = RANDOM_INIT) -> CellResult:
    """Train (or resume) and probe one cell (also on each ``transfer`` dataset); returns and
    stores its result (``result.json``). Not ``trained``: probe the ``baseline`` row instead
    ('random-init', or 'mfcc': MFCC features, no encoder, no transfer)."""
    from biossl.run_eval import evaluate_run
    from biossl.train import train  # looked up per call (tests replace it)
    result_path = cell_dir / "result.json"
    mfcc = not trained and baseline == MFCC_LABEL
    if mfcc:
        transfer = ()
    check_same_config(cfg, cell_dir, None if trained else MFCC_KEYS if mfcc else RANDOM_INIT_KEYS)
    if result_path.is_file():
        res = CellResult.from_json(json.loads(result_path.read_text()))
        if add_transfer(res, cell_dir, list(transfer), trained):
            write_text_atomic(json.dumps(res.to_json(), indent=1), result_path)
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
    rows = evaluate_run(cell_dir, ["eval.random_init=false"] if trained else [], trained=trained,
                        baselines=() if trained else (baseline,))
    res = CellResult(label=cfg.name, seed=cfg.train.seed, rule=rule_name(cfg) if trained else UNTRAINED,
                     objective=cfg.objective.name if trained else "—",
                     encoder=MFCC_LABEL if mfcc else cfg.encoder.name,
                     views="—" if mfcc else cfg.views.name, rows=rows,
                     images_seen=summary.get("steps", 0) * cfg.train.batch_size,
                     train_seconds=summary.get("train_seconds", 0.0),
                     images_per_s=summary.get("images_per_s", float("nan")),
                     peak_mib=peak, wall_seconds=time.time() - t0)
    add_transfer(res, cell_dir, list(transfer), trained)
    write_text_atomic(json.dumps(res.to_json(), indent=1), result_path)
    return res


def audit_cell(cfg: RunConfig, cell_dir: Path) -> dict[str, bool]:
    """The conditions (i)–(iv) ``biossl audit`` observes for a cell's config (its evidence
    written to ``audit.json`` in the cell's directory)."""
    from biossl.audit import audit_config
    report = audit_config(cfg)
    write_text_atomic(json.dumps(report.to_json(), indent=1), cell_dir / "audit.json")
    return report.verdict()


def _run_baseline(cfg: RunConfig, seed: int, name: str, cell_dir: Path, tag: str, progress: bool,
                  **kw) -> CellResult:
    """A baseline row's cell (random init, MFCC): ``cfg`` with this seed and name, probed only."""
    bcfg = build_config(apply_overrides(cfg.to_dict(), [f"train.seed={seed}", f"name={name}"]))
    if progress:
        print(f"[{tag}] {name} seed {seed}: "
              f"{'finished' if (cell_dir / 'result.json').is_file() else 'running'}", flush=True)
    return run_cell(bcfg, cell_dir, trained=False, **kw)


def run_suite(suite: Suite, out: Path, progress: bool = True) -> list[SuiteRow]:
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[CellResult]] = {}
    plaus: dict[str, dict] = {}
    randoms: dict[str, tuple[RunConfig, list[int]]] = {}
    mfcc_cfg: RunConfig | None = None   # the first cell that probes waveforms
    frame_names: set[str] = set()
    protocols: list[str] = []
    plan = [(c, s) for c in suite.cells for s in suite.seeds]
    for i, (cell, seed) in enumerate(plan):
        cfg = cell_config(suite, cell, seed)
        cell_dir = out / "cells" / f"{cell.label}-s{seed}"
        state = "finished" if (cell_dir / "result.json").is_file() else "running"
        if progress:
            print(f"[{i + 1}/{len(plan)}] {cell.label} seed {seed}: {state}", flush=True)
        res = run_cell(cfg, cell_dir, transfer=suite.transfer)
        if res.protocol not in protocols:
            protocols.append(res.protocol)
        groups.setdefault(cell.label, []).append(res)
        if cell.label not in plaus:  # observed, not declared: one instrumented step (biossl audit)
            plaus[cell.label] = audit_cell(cfg, cell_dir)
        key = random_label(cfg.encoder.name, cfg.views.name)
        seeds = randoms.setdefault(key, (cfg, []))[1]
        if seed not in seeds:
            seeds.append(seed)
        if mfcc_cfg is None and probes_waveforms(cfg):
            mfcc_cfg = cfg
        frame_names.add(get_spec(cfg.eval.dataset or cfg.data.name).frame_name)
    for key, (cfg, seeds) in randoms.items():
        for seed in seeds:
            rdir = out / "cells" / f"random-init-{cfg.encoder.name}-{cfg.views.name}-s{seed}"
            groups.setdefault(key, []).append(
                _run_baseline(cfg, seed, key, rdir, "random", progress, transfer=suite.transfer))
    if mfcc_cfg is not None:
        if MFCC_LABEL in groups:
            raise ConfigError(f"suite {suite.name}: a cell is labelled {MFCC_LABEL!r}, the label of the MFCC "
                              f"baseline row; rename the cell (or set eval.mfcc=false)")
        for seed in suite.seeds:
            mdir = out / "cells" / f"baseline-{MFCC_LABEL}-s{seed}"
            groups.setdefault(MFCC_LABEL, []).append(
                _run_baseline(mfcc_cfg, seed, MFCC_LABEL, mdir, "baseline", progress, baseline=MFCC_LABEL))
    rows = group_rows(groups, plaus)
    rows.sort(key=lambda r: (r.trained, r.label))
    # the frame probe's header word ('phone' for speech) when every cell probes the same kind
    frame_name = frame_names.pop() if len(frame_names) == 1 else "frame"
    write_text_atomic(format_markdown(suite, rows, protocols, frame_name), out / "results.md")
    write_csv(rows, out / "results.csv")
    plot(rows, out / "results.png", f"{suite.name}: per-stage linear probe", frame_name)
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
