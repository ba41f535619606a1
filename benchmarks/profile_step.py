"""Profile of training steps, several cells in one process (torch.profiler, CPU): the top
ops of each cell by self time, and each op's share of its cell's step.

PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/profile_step.py --batch 64 --steps 3 \
    --set train.threads=1 biossl-t1 "biossl-t1-dtp transport.diagnostics_every=0 transport.inverse_warmup=0"
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from biossl.bench import BenchCell, command_line_cells, with_batch_sizes

# shares of a step by kind of work (issue 18's DTP profile); the rest is element-wise work
CATEGORIES = {
    "convolutions (forward, transposed, backward)": ("aten::mkldnn_convolution", "aten::_convolution",
                                                     "aten::convolution_backward"),
    "max-pool and its backward": ("aten::max_pool2d_with_indices", "aten::scatter_add_", "aten::maximum"),
    "layout copies and clones": ("aten::copy_",),
    "MSE losses": ("aten::mse_loss", "aten::mse_loss_backward"),
    "noise draws": ("aten::normal_",),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    specs = [c for spec in args.cells for c in command_line_cells(spec, args.overrides)]
    cells = [BenchCell(label, cfg, *epoch) for label, cfg, *epoch in with_batch_sizes(specs, [args.batch])]
    for c in cells:
        c.steps(args.warmup)
    for c in cells:
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                c._step()
        wall = (time.perf_counter() - t) / args.steps
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\n== {c.label}: {wall * 1e3:.0f} ms/step under the profiler, "
              f"self time {total / args.steps / 1e3:.0f} ms/step")
        print(f"{'op':<48} {'ms/step':>8} {'share':>6} {'calls':>6}")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            print(f"{e.key[:48]:<48} {e.self_cpu_time_total / args.steps / 1e3:8.1f} "
                  f"{e.self_cpu_time_total / total:6.1%} {e.count // args.steps:6d}")
        by_op = {e.key: e.self_cpu_time_total for e in events}
        for name, ops in CATEGORIES.items():
            print(f"  {name}: {sum(by_op.get(o, 0) for o in ops) / total:.1%}")
        rest = total - sum(by_op.get(o, 0) for ops in CATEGORIES.values() for o in ops)
        print(f"  the rest (element-wise, optimizer, head): {rest / total:.1%}")


if __name__ == "__main__":
    main()
