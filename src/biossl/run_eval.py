"""Probe a finished (or partly trained) run: per-stage table for the trained encoder and
the random-init encoder of the same seed, written as CSV, markdown and a PNG plot.

Only what probing needs is built: the view recipe (its deterministic eval input) and the
encoder, which gets the checkpoint's forward weights (biossl.trained_encoder); the rule,
its objectives and optimizers are never built."""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import torch

from biossl.assemble import build_encoder, resolve_device
from biossl.checkpoint import load, write_text_atomic
from biossl.config import ConfigError, RunConfig, apply_overrides, build_config
from biossl.data import get_spec, load_dataset
from biossl.data.resize import fit_images, resize_note
from biossl.evaluate import ProbeRow, evaluate_encoder, format_table, plot_rows, write_csv
from biossl.naming import encoder_label
from biossl.registry import VIEWS, load_all
from biossl.rundir import CHECKPOINT, config_changes, load_run_config
from biossl.trained_encoder import load_trained_weights


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


def probe_parts(cfg: RunConfig, device: torch.device | None = None):
    """(training dataset spec, view recipe, device) of a run: what its encoder is built and
    probed with, on train.threads CPU threads as in training. (assemble builds the same
    spec and recipe, next to the rule a probe does not need.)"""
    load_all()
    device = device or resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    spec = get_spec(cfg.data.name)
    recipe = VIEWS.build(cfg.views.name, cfg.views.params, tuple(spec.image_shape))
    return spec, recipe, device


def trained_encoder(run_dir: str | Path, cfg: RunConfig, recipe, spec, device: torch.device):
    """(the run's encoder with the checkpoint's weights, the checkpoint)."""
    state = load(Path(run_dir) / CHECKPOINT, map_location="cpu")
    encoder = load_trained_weights(build_encoder(cfg, recipe, spec, device), state, run_dir)
    return encoder, state


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), progress: bool | None = None,
                 trained: bool = True) -> list[ProbeRow]:
    """Probe the run's trained encoder (``trained``) and/or its random-init encoder per stage;
    writes the probe table (``probe_stem``) and returns its rows."""
    run_dir = Path(run_dir)
    base, cfg = _eval_configs(run_dir, overrides)
    train_spec, recipe, device = probe_parts(cfg)
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
    shape = tuple(train_spec.image_shape)
    if tuple(spec.image_shape) != shape:
        if not cfg.eval.resize:
            raise ConfigError(f"cannot probe {dataset} {tuple(spec.image_shape)} with an encoder trained on "
                              f"{cfg.data.name} {shape}: image shapes differ; set "
                              f"eval.resize=true to resize the probe images")
        try:
            tr_x, te_x = fit_images(tr_x, shape), fit_images(te_x, shape)
        except ValueError as e:
            raise ConfigError(f"cannot probe {dataset} with an encoder trained on {cfg.data.name}: {e}") from None
        note = resize_note(spec.image_shape, shape)
    encoders, budgets, untrained = [], {}, ""
    random_init = build_encoder(cfg, recipe, train_spec, device)
    if trained:
        encoder, state = trained_encoder(run_dir, cfg, recipe, train_spec, device)
        step = state["global_step"]
        if _same_weights(encoder, random_init):
            # e.g. stopped within a rule's warm-up that leaves the encoder untouched (DTP)
            untrained = (f"WARNING: the encoder is untrained: the run stopped at step {step} with "
                         f"the encoder's weights still at their random init (nothing has updated "
                         f"them yet: train longer); its rows equal random init.")
            print(untrained, file=sys.stderr)
        encoders.append((encoder_label(cfg), encoder, step * cfg.train.batch_size))
    if cfg.eval.random_init or not trained:
        encoders.append(("random-init", random_init, 0))
    for label, enc, seen in encoders:
        rows += evaluate_encoder(enc, label, tr_x, tr_y, te_x, te_y, recipe, cfg.eval,
                                 spec.num_classes, device, seed=cfg.train.seed,
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
