"""Training images/s and peak memory of gll, rll, e2e-rf, e2e-urf, e2e-sign relative to
e2e-bp, same encoder and batch, measured in one process with ``biossl.bench``.

GLL's cost depends on the stage being trained (stage i runs stages < i without autograd
and stage i with it), so it is measured at every stage, and ``gll (schedule mean)`` is the
mean over a full schedule (equal epochs per stage).

    python benchmarks/bench_layerwise.py                       # fmnist-bp-hinge, CPU
    python benchmarks/bench_layerwise.py --config biossl-t1 --steps 30 train.device=cuda
"""
from __future__ import annotations

import argparse
import statistics

import torch

from biossl.bench import bench_configs, format_bench, write_bench_json
from biossl.config import apply_overrides, build_config, load_raw
from biossl.registry import ENCODERS, load_all

CELLS = [  # (label, rule overrides); the first is the reference
    ("e2e-bp", ["rule.name=bp"]),
    ("e2e-rf", ["rule.name=rf"]),
    ("e2e-urf", ["rule.name=urf"]),
    ("e2e-sign", ["rule.name=sign"]),
    ("gll-bp", ["rule.name=gll", "rule.feedback=bp"]),
    ("gll-urf", ["rule.name=gll", "rule.feedback=urf"]),
    ("rll-bp", ["rule.name=rll", "rule.feedback=bp"]),
    ("rll-urf", ["rule.name=rll", "rule.feedback=urf"]),
]


def build_cells(config: str, overrides: list[str]) -> list[tuple]:
    """(label, config, schedule epoch) per cell; one cell per stage for GLL."""
    load_all()
    raw = load_raw(config)
    cells = []
    for label, ov in CELLS:
        # gradient-angle diagnostics off: they are an occasional extra pass, not training
        cfg = build_config(apply_overrides(raw, ov + ["rule.diagnostics_every=0"] + overrides))
        if cfg.rule.name == "gll":
            stages = len(ENCODERS.build(cfg.encoder.name, cfg.encoder.params, 1))
            cells += [(f"{label}-stage{s}", cfg, s * cfg.train.epochs) for s in range(stages)]
        else:
            cells.append((label, cfg, 0))
    return cells


def add_schedule_means(rows: list[dict]) -> list[dict]:
    """One extra row per GLL variant: the mean step over its stages, relative to e2e-bp."""
    ref = rows[0]
    for prefix in sorted({r["label"].rsplit("-stage", 1)[0] for r in rows if "-stage" in r["label"]}):
        stages = [r for r in rows if r["label"].startswith(prefix + "-stage")]
        mean_ms = statistics.fmean(r["step_ms"] for r in stages)
        peak = max(r["peak_mib"] for r in stages)
        rows.append({**stages[0], "label": f"{prefix} (schedule mean)", "step_ms": mean_ms,
                     "images_per_s": stages[0]["batch_size"] / (mean_ms / 1e3),
                     "images_per_s_vs_ref": ref["step_ms"] / mean_ms,
                     "step_time_vs_ref": mean_ms / ref["step_ms"], "peak_mib": peak,
                     "peak_mem_vs_ref": peak / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="fmnist-bp-hinge", help="base recipe (its rule is replaced)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/bench_layerwise.json")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the base recipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_configs(build_cells(args.config, args.overrides), steps=args.steps,
                         warmup=args.warmup, rounds=args.rounds)
    rows = add_schedule_means(rows)
    result = write_bench_json(rows, args.out, config=args.config, overrides=args.overrides)
    print(format_bench(rows))
    print(f"\nmachine: {result['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
