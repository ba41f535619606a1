"""Training images/s and peak memory of gll, rll, e2e-rf, e2e-urf, e2e-sign relative to
e2e-bp, same encoder and batch, measured in one process.

GLL's cost depends on the stage being trained (stage i runs stages < i without autograd
and stage i with it), so it is measured at every stage, and ``gll (schedule mean)`` is
the time-weighted mean over a full schedule (equal epochs per stage). Timing and memory
use ``biossl.bench`` (interleaved rounds, median round; CPU peak = VmHWM after resetting
/proc/self/clear_refs, minus the resident set before the steps). On the CPU, run it with
MALLOC_MMAP_THRESHOLD_=131072 so freed activations go back to the OS between cells
(otherwise glibc keeps them and later cells look smaller than they are).

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/bench_layerwise.py   # fmnist-bp-hinge, CPU
    python benchmarks/bench_layerwise.py --config biossl-t1 --steps 30 train.device=cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from biossl.bench import _Cell, machine
from biossl.config import apply_overrides, build_config, load_raw

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


def build_cells(config: str, overrides: list[str]) -> list[tuple[str, _Cell]]:
    raw = load_raw(config)
    cells = []
    for label, ov in CELLS:
        # gradient-angle diagnostics off: they are an occasional extra pass, not training
        cfg = build_config(apply_overrides(raw, ov + ["rule.diagnostics_every=0"] + overrides))
        cell = _Cell(label, cfg)
        rule = cell.asm.rule
        if cfg.rule.name == "gll":
            cell.label = f"{label}-stage0"
            for s in range(len(rule.encoder)):
                sub = _Cell(f"{label}-stage{s}", cfg) if s else cell
                sub.asm.rule.start_epoch(s * cfg.train.epochs)
                cells.append((sub.label, sub))
        else:
            cells.append((label, cell))
    return cells


def run(cells: list[tuple[str, _Cell]], steps: int, warmup: int, rounds: int) -> list[dict]:
    for label, c in cells:
        c.steps(warmup)
        c.measure_peak(max(2, steps // 4))
        print(f"  built {label}: peak {c.peak_bytes / 2**20:.0f} MiB", flush=True)
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for _, c in cells:
            c.step_times.append(c.steps(per_round))
        print(f"  round {r + 1}/{rounds}", flush=True)
    rows = []
    for label, c in cells:
        st = statistics.median(c.step_times)
        rows.append({"label": label, "step_ms": 1e3 * st, "images_per_s": c.cfg.train.batch_size / st,
                     "peak_mib": c.peak_bytes / 2**20, "batch_size": c.cfg.train.batch_size,
                     "encoder": c.cfg.encoder.name, "device": str(c.asm.device)})
    for prefix in sorted({r["label"].rsplit("-stage", 1)[0] for r in rows if "-stage" in r["label"]}):
        stages = [r for r in rows if r["label"].startswith(prefix + "-stage")]
        mean_ms = statistics.fmean(r["step_ms"] for r in stages)
        rows.append({**stages[0], "label": f"{prefix} (schedule mean)", "step_ms": mean_ms,
                     "images_per_s": stages[0]["batch_size"] / (mean_ms / 1e3),
                     "peak_mib": max(r["peak_mib"] for r in stages)})
    ref = rows[0]
    for r in rows:
        r["images_per_s_vs_e2e_bp"] = r["images_per_s"] / ref["images_per_s"]
        r["peak_mem_vs_e2e_bp"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
    return rows


def table(rows: list[dict]) -> str:
    out = ["| cell | step ms | images/s | × e2e-bp images/s | peak MiB | × e2e-bp peak |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['step_ms']:.0f} | {r['images_per_s']:.0f} | "
                   f"{r['images_per_s_vs_e2e_bp']:.2f} | {r['peak_mib']:.0f} | {r['peak_mem_vs_e2e_bp']:.2f} |")
    return "\n".join(out)


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
    cells = build_cells(args.config, args.overrides)
    rows = run(cells, args.steps, args.warmup, args.rounds)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config,
              "overrides": args.overrides, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"\nmachine: {result['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
