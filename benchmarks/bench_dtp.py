"""DTP's training-step time relative to end-to-end BP on the same encoder and batch.

Both rules are built from one recipe that differs only in ``rule`` and measured in one
process by :func:`biossl.bench.bench_configs` (interleaved rounds, median kept). The DTP
cell runs without feedback warm-up, so every timed step does the full work: one
feedback update per g_l, the targets and the stage updates.

    python benchmarks/bench_dtp.py                                   # Fashion-MNIST convstack
    python benchmarks/bench_dtp.py --recipe biossl-t1-dtp train.batch_size=100
    python benchmarks/bench_dtp.py objective.grad_block=false        # both views carry error

Without the dataset files, random uint8 images of the right shape are used.
"""
from __future__ import annotations

import argparse

import torch

from biossl.bench import bench_configs, format_bench, write_bench_json
from biossl.config import apply_overrides, build_config, load_raw


def cells(recipe: str, overrides: list[str], variants: list[str]) -> list:
    raw = load_raw(recipe)
    bp = build_config(apply_overrides(raw, ["rule.name=bp", *overrides]))
    out = [("e2e-bp", bp)]
    dtp = ["rule.name=dtp", "rule.feedback_warmup=0", *overrides]
    out.append(("dtp", build_config(apply_overrides(raw, dtp))))
    for v in variants:  # extra DTP settings, e.g. rule.feedback_every=4
        out.append((f"dtp {v}", build_config(apply_overrides(raw, [*dtp, *v.split(",")]))))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe (both cells)")
    ap.add_argument("--recipe", default="fmnist-dtp-hinge")
    ap.add_argument("--variant", action="append", default=[],
                    help="an extra DTP cell: comma-separated overrides (repeatable)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/bench_dtp.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"train.threads={args.threads}", "train.device=cpu", *args.overrides] \
        if not torch.cuda.is_available() else list(args.overrides)
    rows = bench_configs(cells(args.recipe, overrides, args.variant), steps=args.steps,
                         warmup=args.warmup)
    print(format_bench(rows))
    for r in rows[1:]:
        print(f"{r['label']}: step time {r['step_time_vs_ref']:.2f}× e2e-bp")
    write_bench_json(rows, args.out, recipe=args.recipe, overrides=args.overrides)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
