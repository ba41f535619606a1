"""Training images/s and peak memory of CLAPP (autograd and explicit rule), GIM, hinge-loss
CPC and CPC (end-to-end BP, the reference), same encoder, views and batch, one process.

Timing and memory use ``biossl.bench`` (interleaved rounds, median round; CPU peak =
VmHWM after resetting /proc/self/clear_refs, minus the resident set before the steps,
measured in a pass that serves large allocations by mmap, so no environment is needed).

    python benchmarks/bench_clapp.py                                                 # fmnist, CPU
    python benchmarks/bench_clapp.py --config clapp-stl10 train.device=cuda --steps 30  # vgg6
"""
from __future__ import annotations

import argparse

import torch

from biossl.bench import bench_configs, format_bench, write_bench_json
from biossl.config import apply_overrides, build_config, load_raw

CELLS = [  # (label, overrides of the base recipe); the first is the reference
    ("cpc (e2e-bp)", ["rule.name=bp", "objective.name=infonce"]),
    ("hinge-cpc (e2e-bp)", ["rule.name=bp"]),
    ("clapp autograd", ["rule.name=clapp", "rule.mode=autograd"]),
    ("clapp explicit", ["rule.name=clapp", "rule.mode=explicit"]),
    ("gim", ["rule.name=gim", "objective.name=infonce"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="fmnist-clapp", help="base recipe (its encoder, views, batch)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per cell (over 3 rounds)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="results/bench_clapp.json")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every cell")
    args = ap.parse_args()
    raw = load_raw(args.config)
    cells = [(label, build_config(apply_overrides(raw, ov + args.overrides))) for label, ov in CELLS]
    print(f"benchmarking {len(cells)} cells on {args.config}, {args.steps} steps each, "
          f"torch threads {torch.get_num_threads()}")
    rows = bench_configs(cells, steps=args.steps, warmup=args.warmup)
    result = write_bench_json(rows, args.out, config=args.config, overrides=args.overrides)
    print(format_bench(rows).replace("×e2e-bp", "×cpc"))
    print(f"\nmachine: {result['machine']}\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
