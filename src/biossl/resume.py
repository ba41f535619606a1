"""Where a training process starts: a new run (refusing a directory that holds one unless
asked to overwrite it) or a saved one, whose config may have changed since.

A resume may change the keys in :data:`APPLIED_ON_RESUME` (an edited config.yaml, or
``key=value`` overrides after ``--resume RUN``): they take effect from the resume on — a new
lr, weight decay or momentum is written into every restored optimizer, more epochs extend
a finished run — and are recorded in config.yaml, the checkpoint and a
``resume_config_change`` row of metrics.jsonl. A change to any other key (shapes, data,
views, seed, batch size, schedule, transport, objective) is refused with the list of changed keys: the
saved state or the data order depends on it.
"""
from __future__ import annotations

import json
from pathlib import Path

from biossl.checkpoint import load
from biossl.config import ConfigError, RunConfig, apply_overrides, build_config
from biossl.rundir import (CHECKPOINT, DIVERGED, METRICS, RUN_CONFIG, RunDirError, config_changes,
                           flat_config, load_run_config, note, q, remove_run_files, run_contents)


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN/inf or explodes; the message says what was saved."""


APPLIED_ON_RESUME = ("name", "train.epochs", "train.lr", "train.weight_decay", "train.momentum",
                     "train.threads", "train.precision", "train.channels_last", "train.stage_chunks",
                     "train.compile", "train.checkpoint_every", "train.checkpoint_minutes",
                     "train.log_every", "train.divergence_factor", "transport.inverse_lr",
                     "data.root", "data.download", "eval.", "parallel.")
"""Config keys (or prefixes, ending in '.') a resumed run may change; nothing saved depends
on them. Optimizer hyper-parameters are written into the restored optimizers."""


DIVERGENCE_REMEDIES = ("train.lr", "train.weight_decay", "train.momentum", "train.precision",
                       "train.divergence_factor", "transport.inverse_lr")
"""Changes that let a diverged run be resumed (the same settings replay the same blow-up)."""


def remedy_settings(cfg: RunConfig) -> dict:
    flat = flat_config(cfg.to_dict())
    return {k: flat.get(k) for k in DIVERGENCE_REMEDIES}


def applied_on_resume(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in APPLIED_ON_RESUME)


def show_changes(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changes.items())


def describe(run_dir: Path, names: list[str]) -> str:
    """The run files, with what they hold (for --overwrite and refusals)."""
    out = []
    for name in names:
        p = run_dir / name
        if name == CHECKPOINT:
            try:
                st = load(p)
                out.append(f"{name} (epoch {st['epoch']}, global step {st['global_step']})")
            except Exception:
                out.append(f"{name} (unreadable)")
        elif name == METRICS:
            out.append(f"{name} ({sum(1 for ln in p.read_text().splitlines() if ln.strip())} rows)")
        elif p.is_dir():
            out.append(f"{name}/")
        else:
            out.append(name)
    return ", ".join(out)


class StartPoint:
    """What a training process starts from: the config (for a resume: possibly changed, with
    ``changes`` {key: (old, new)}) and the saved state (None: step 0)."""

    def __init__(self, cfg: RunConfig, state: dict | None, changes: dict[str, tuple]):
        self.cfg, self.state, self.changes = cfg, state, changes


def prepare_resume(cfg: RunConfig | None, overrides: list[str], run_dir: Path) -> StartPoint:
    """Continue the run in ``run_dir`` with ``cfg`` (default: its config.yaml, or the
    checkpoint's when that file is gone) plus ``overrides``; refuses changes the saved state
    depends on and a diverged run resumed with the settings that made it diverge."""
    contents = run_contents(run_dir)
    if not contents:
        raise RunDirError(f"--resume: {run_dir} holds no run; start one with: "
                          f"biossl train CONFIG --out {q(run_dir)}")
    ckpt = run_dir / CHECKPOINT
    state = load(ckpt) if ckpt.is_file() else None
    stored = None
    if state is not None:
        try:
            stored = build_config(state["config"])
        except ConfigError as e:
            raise RunDirError(f"the config stored in {ckpt} is no longer valid ({e}); this run was "
                              f"made by another version of biossl: continue it with that version") from None
    if cfg is None:
        if (run_dir / RUN_CONFIG).is_file():
            cfg = load_run_config(run_dir)
        elif stored is not None:
            note(f"{run_dir / RUN_CONFIG} is missing: rewriting it from the checkpoint's config")
            cfg = stored
        else:
            raise RunDirError(f"--resume: {run_dir} has neither config.yaml nor checkpoint.pt "
                              f"(only {', '.join(contents)}); start it again: biossl train CONFIG "
                              f"--out {q(run_dir)} --overwrite")
    if overrides:
        cfg = build_config(apply_overrides(cfg.to_dict(), list(overrides)))
    info = json.loads((run_dir / DIVERGED).read_text()) if (run_dir / DIVERGED).is_file() else None
    if info is not None and info.get("settings") == remedy_settings(cfg):
        raise TrainingDiverged(
            f"{run_dir} diverged at global step {info.get('global_step')} ({info.get('reason')}); "
            f"resuming with the same settings replays the same batches and diverges again. Fix: "
            f"{info.get('fix')}")
    if state is None:
        # stopped before its first checkpoint: nothing to continue; the same config from step 0
        stale = [n for n in contents if n != RUN_CONFIG]
        note(f"{run_dir} has no checkpoint yet (it stopped before its first one): training from "
             f"step 0 with its config" + (f"; replacing {', '.join(stale)}" if stale else ""))
        remove_run_files(run_dir, stale)
        return StartPoint(cfg, None, {})
    changes = config_changes(stored, cfg)
    refused = {k: v for k, v in changes.items() if not applied_on_resume(k)}
    if refused:
        raise ConfigError(
            f"cannot resume {run_dir}: its config differs from the one its checkpoint was trained "
            f"with in keys the saved state or the data order depends on: {show_changes(refused)}. Fix: put "
            f"those values back (in {run_dir / RUN_CONFIG}, or drop those overrides), or train the "
            f"new config as a new run: biossl train {q(run_dir / RUN_CONFIG)} --out NEW_DIR. A resume "
            f"may change only: {', '.join(k + '*' if k.endswith('.') else k for k in APPLIED_ON_RESUME)}")
    return StartPoint(cfg, state, changes)


def check_resumable_changes(res: StartPoint, rule, epoch: int, step_in_epoch: int, run_dir: Path) -> None:
    """Refuse epoch changes the saved position or schedule cannot follow."""
    if "train.epochs" not in res.changes:
        return
    old, new = res.changes["train.epochs"]
    if not rule.schedule.epochs_resizable:
        raise ConfigError(f"cannot resume {run_dir} with train.epochs {old} → {new}: schedule "
                          f"{res.cfg.schedule.name} splits train.epochs over the stages, so the change "
                          f"would move the stages' schedule under the saved state. Fix: put "
                          f"train.epochs={old} back, or start a new run with the new value")
    started = epoch + (1 if step_in_epoch else 0)
    if new < started:
        raise ConfigError(f"cannot resume {run_dir} with train.epochs={new}: {started} epochs have "
                          f"already been trained. Fix: give train.epochs ≥ {started}")


def prepare_fresh(cfg: RunConfig, overrides: list[str], run_dir: Path, overwrite: bool) -> StartPoint:
    """A new run in ``run_dir``: refused where a run is, unless ``overwrite`` (which says
    what it deletes)."""
    contents = run_contents(run_dir)
    if contents and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({describe(run_dir, contents)}); continue it with "
            f"biossl train --resume {q(run_dir)}, delete it with --overwrite, or give another "
            f"--out directory")
    if contents:
        note(f"--overwrite: deleting the previous run in {run_dir}: {describe(run_dir, contents)}")
        remove_run_files(run_dir, contents)
    if overrides:
        cfg = build_config(apply_overrides(cfg.to_dict(), list(overrides)))
    return StartPoint(cfg, None, {})
