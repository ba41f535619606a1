"""Probe a finished (or partly trained) run: per-stage table for the trained encoder and
the random-init encoder of the same seed, written as CSV, markdown and a PNG plot."""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from biossl.assemble import assemble, build_encoder
from biossl.checkpoint import load, write_text_atomic
from biossl.config import ConfigError, RunConfig, apply_overrides, build_config
from biossl.data import get_spec, load_dataset
from biossl.data.resize import fit_images, resize_note
from biossl.evaluate import evaluate_encoder, format_table, plot_rows, write_csv
from biossl.rundir import CHECKPOINT, config_changes, load_run_config


def _stem(run_dir: Path, base: RunConfig, cfg: RunConfig) -> Path:
    """``probe`` for the run's own eval settings, ``probe-KEY=VALUE…`` for other settings."""
    changes = config_changes(base, cfg)
    if not changes:
        return run_dir / "probe"
    slug = "_".join(f"{k.removeprefix('eval.')}={new}" for k, (_, new) in changes.items())
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", slug)
    if len(slug) > 80:
        slug = slug[:60] + "_" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return run_dir / f"probe-{slug}"


def _eval_configs(run_dir: Path, overrides) -> tuple[RunConfig, RunConfig]:
    """(the run's own config, the config with the eval overrides applied)."""
    base = load_run_config(run_dir)
    cfg = build_config(apply_overrides(base.to_dict(), list(overrides))) if overrides else base
    return base, cfg


def probe_stem(run_dir: str | Path, overrides: list[str] = ()) -> Path:
    """Where a probe table goes: ``probe`` for the run's own eval settings, ``probe-KEY=VALUE…``
    for other settings (eval.* overrides, another dataset), so each settings keeps its table
    and a re-run with the same settings replaces only its own."""
    run_dir = Path(run_dir)
    return _stem(run_dir, *_eval_configs(run_dir, overrides))


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), progress: bool | None = None,
                 trained: bool = True) -> list:
    run_dir = Path(run_dir)
    base, cfg = _eval_configs(run_dir, overrides)
    asm = assemble(cfg)
    rows = []
    dataset = cfg.eval.dataset or cfg.data.name
    spec = get_spec(dataset)
    train = load_dataset(dataset, spec.probe_train_split, root=cfg.data.root, download=cfg.data.download)
    test = load_dataset(dataset, spec.test_split, root=cfg.data.root, download=cfg.data.download)
    tr_x, tr_y = train.images, train.labels
    te_x, te_y = test.images, test.labels
    if cfg.eval.max_train:
        tr_x, tr_y = tr_x[: cfg.eval.max_train], tr_y[: cfg.eval.max_train]
    if cfg.eval.max_test:
        te_x, te_y = te_x[: cfg.eval.max_test], te_y[: cfg.eval.max_test]
    note = ""
    if tuple(spec.image_shape) != tuple(asm.spec.image_shape):
        if not cfg.eval.resize:
            raise ConfigError(f"cannot probe {dataset} {tuple(spec.image_shape)} with an encoder trained on "
                              f"{cfg.data.name} {tuple(asm.spec.image_shape)}: image shapes differ; set "
                              f"eval.resize=true to resize the probe images")
        try:
            tr_x, te_x = fit_images(tr_x, asm.spec.image_shape), fit_images(te_x, asm.spec.image_shape)
        except ValueError as e:
            raise ConfigError(f"cannot probe {dataset} with an encoder trained on {cfg.data.name}: {e}") from None
        note = resize_note(spec.image_shape, asm.spec.image_shape)
    encoders, budgets, untrained = [], {}, ""
    if trained:
        state = load(run_dir / CHECKPOINT, map_location="cpu")
        try:
            asm.rule.load_state_dict(state["rule"])
        except (RuntimeError, ValueError, KeyError):
            changed = config_changes(build_config(state["config"]), load_run_config(run_dir))
            raise ConfigError(f"the checkpoint in {run_dir} does not fit its config.yaml, edited since "
                              f"training ({'; '.join(f'{k}: {a!r} → {b!r}' for k, (a, b) in changed.items())}); "
                              f"put those values back to probe it") from None
        budget = state["global_step"] * cfg.train.batch_size
        frozen = asm.rule.encoder_frozen_steps()
        if state["global_step"] <= frozen:
            untrained = (f"WARNING: the encoder is untrained: the run stopped at step "
                         f"{state['global_step']}, within rule {cfg.rule_name()}'s {frozen}-step warm-up "
                         f"(rule.feedback_warmup) that leaves it untouched; its rows equal random init.")
            print(untrained, file=sys.stderr)
        encoders.append((f"{cfg.rule_name()}+{cfg.objective.name}", asm.rule.encoder, budget))
    if cfg.eval.random_init or not trained:
        encoders.append(("random-init", build_encoder(cfg, asm.recipe, asm.spec, asm.device), 0))
    for label, enc, seen in encoders:
        rows += evaluate_encoder(enc, label, tr_x, tr_y, te_x, te_y, asm.recipe, cfg.eval,
                                 spec.num_classes, asm.device, seed=cfg.train.seed,
                                 progress=True if progress is None else progress)
        budgets[label] = seen
    if note:
        for r in rows:
            r.protocol = f"{r.protocol} | {dataset} {note}"
    out = _stem(run_dir, base, cfg)
    write_csv(rows, out.with_suffix(".csv"))
    table = format_table(rows)
    budget = "; ".join(f"{k}: {v} images seen in SSL" for k, v in budgets.items())
    warn = f"{untrained}\n\n" if untrained else ""
    write_text_atomic(f"# {cfg.name}: probe on {dataset}\n\n{warn}Budget — {budget}.\n\n{table}\n",
                      out.with_suffix(".md"))
    plot_rows(rows, out.with_suffix(".png"))
    return rows
