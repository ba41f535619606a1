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

from biossl.assemble import build_encoder, build_inputs
from biossl.checkpoint import load, write_text_atomic
from biossl.config import ConfigError, RunConfig, apply_overrides, build_config
from biossl.data import get_spec, load_dataset
from biossl.data.resize import fit_images, resize_note
from biossl.evaluate import (MFCC_LABEL, ProbeRow, evaluate_encoder, evaluate_mfcc, format_table,
                             is_waveform, limit_splits, plot_rows, write_csv)
from biossl.naming import RANDOM_INIT, encoder_label
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


def trained_encoder(run_dir: str | Path, cfg: RunConfig, recipe, spec, device: torch.device):
    """(the run's encoder with the checkpoint's weights, the checkpoint)."""
    state = load(Path(run_dir) / CHECKPOINT, map_location="cpu")
    encoder = load_trained_weights(build_encoder(cfg, recipe, spec, device), state, run_dir)
    return encoder, state


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), progress: bool | None = None,
                 trained: bool = True, baselines: tuple[str, ...] | None = None) -> list[ProbeRow]:
    """Probe the run's trained encoder (``trained``) and its baseline rows per stage; writes
    the probe table (``probe_stem``) and returns its rows.

    baselines: which baseline rows to add, from ``'random-init'`` (the encoder at its random
    init, same seed) and ``'mfcc'`` (the MFCC features of a waveform dataset, one stage).
    None: as the config says — random init when ``eval.random_init`` (or when not
    ``trained``), MFCC when ``eval.mfcc`` and the probe dataset holds waveforms (1, T).
    With frame labels (speech: phones) every row also gets the frame-level probe."""
    run_dir = Path(run_dir)
    base, cfg = _eval_configs(run_dir, overrides)
    train_spec, recipe, device = build_inputs(cfg)
    rows = []
    dataset = cfg.eval.dataset or cfg.data.name
    spec = get_spec(dataset)
    if baselines is None:
        baselines = ((RANDOM_INIT,) if cfg.eval.random_init or not trained else ()) + \
            ((MFCC_LABEL,) if cfg.eval.mfcc and is_waveform(tuple(spec.image_shape)) else ())
    unknown = set(baselines) - {RANDOM_INIT, MFCC_LABEL}
    if unknown:
        raise ValueError(f"unknown baseline rows {sorted(unknown)}; known: {RANDOM_INIT}, {MFCC_LABEL}")
    if MFCC_LABEL in baselines and not is_waveform(tuple(spec.image_shape)):
        raise ConfigError(f"the MFCC baseline needs waveforms (1, T); {dataset} has samples of shape "
                          f"{tuple(spec.image_shape)}: set eval.mfcc=false")
    train = load_dataset(dataset, spec.probe_train_split, root=cfg.data.root, download=cfg.data.download)
    test = load_dataset(dataset, spec.test_split, root=cfg.data.root, download=cfg.data.download)
    # cut before resizing: the probes would cut the same first N anyway
    tr_x, tr_y, tr_f, te_x, te_y, te_f = limit_splits(cfg.eval, train.images, train.labels, train.frame_labels,
                                                      test.images, test.labels, test.frame_labels)
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
    # the frame probe runs where the dataset has frame labels (speech: phones per 10 ms)
    frames = dict(train_frames=tr_f, test_frames=te_f, frame_classes=train.frame_classes,
                  frame_name=spec.frame_name)
    show = True if progress is None else progress
    encoders, budgets, untrained = [], {}, ""
    random_init = (build_encoder(cfg, recipe, train_spec, device)
                   if trained or RANDOM_INIT in baselines else None)
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
    if RANDOM_INIT in baselines:
        encoders.append((RANDOM_INIT, random_init, 0))
    for label, enc, seen in encoders:
        rows += evaluate_encoder(enc, label, tr_x, tr_y, te_x, te_y, recipe, cfg.eval,
                                 spec.num_classes, device, seed=cfg.train.seed, progress=show, **frames)
        budgets[label] = seen
    if MFCC_LABEL in baselines:
        # the raw int16 segments, whatever the training shape (MFCCs need no encoder)
        rows += evaluate_mfcc(MFCC_LABEL, train.images[: len(tr_y)], tr_y, test.images[: len(te_y)], te_y,
                              cfg.eval, spec.num_classes, device, seed=cfg.train.seed, progress=show, **frames)
    if note:
        for r in rows:
            r.protocol = f"{r.protocol} | {dataset} {note}"
    out = _stem(run_dir, base, cfg)
    write_csv(rows, out.with_suffix(".csv"))
    table = format_table(rows, spec.frame_name)
    budget = "; ".join(f"{k}: {v} images seen in SSL" for k, v in budgets.items())
    warn = f"{untrained}\n\n" if untrained else ""
    head = f"Budget — {budget}.\n\n" if budgets else ""
    write_text_atomic(f"# {cfg.name}: probe on {dataset}\n\n{warn}{head}{table}\n",
                      out.with_suffix(".md"))
    plot_rows(rows, out.with_suffix(".png"), spec.frame_name)
    return rows
