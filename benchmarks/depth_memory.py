"""Peak memory of bench cells, one cell at a time in one process (issue 18's memory columns).

Memory of a step is deterministic (unlike its time on a loaded machine), so this runs the
memory pass of `biossl bench` (biossl.bench_memory) alone, printing each cell as it ends:
per cell one warm-up step (allocator, lazy init, Adam states), then the peak over
``--steps`` steps above the resident set before them, with glibc serving large allocations
by mmap (biossl.measure). The first cell of each batch
size (encoder and views: bench.reference_key) is the reference of the ratios (list e2e-bp first). Usage:
  PYTHONPATH=src python benchmarks/depth_memory.py --batch 256 --set train.threads=1 \
      biossl-t1 "biossl-t1@all schedule.name=greedy train.epochs=5 transport.name=urf ..."
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from biossl.bench import command_line_cells, distinct_labels, reference_key, with_batch_sizes
from biossl.bench_memory import peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="+", help="bench cells 'CONFIG[@POS] [key=value ...]'")
    ap.add_argument("--batch", type=int, action="append", default=[])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON rows to write")
    args = ap.parse_args()
    cells = with_batch_sizes(distinct_labels([c for spec in args.cells for c in command_line_cells(spec, args.overrides)]),
                             args.batch)
    rows, refs = [], {}
    for (label, cfg, *_), peak in zip(cells, peaks(cells, args.steps)):  # one cell at a time
        mib = peak / 2**20
        ref = refs.setdefault(reference_key(cfg), mib)
        rows.append({"label": label, "batch_size": cfg.train.batch_size, "peak_mib": mib, "vs_ref": mib / ref})
        print(f"{label:70s} {mib:8.1f} MiB  {mib / ref:5.2f} ×", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
