"""Paired step times of two source trees' DTP (or any cell) against e2e-bp, in ONE process:
the cells run in rotating order each round, so load drifting between rounds hits them alike;
ratios are taken per round (median and quartiles), in wall and in this thread's user CPU
time (less sensitive to other jobs on a shared machine than wall time).

Issue 18's DTP step, the branch point against this tree:
  git archive b7515a1 src | tar -x -C /tmp/old && \
  OMP_NUM_THREADS=1 python benchmarks/step_ab.py --old /tmp/old/src --new src --rounds 15
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

CELL = "biossl-t1-dtp transport.diagnostics_every=0 transport.inverse_warmup=0"


def _load(src: str):
    """biossl's bench helpers from the tree at ``src`` (a fresh import of the package)."""
    for m in [m for m in sys.modules if m == "biossl" or m.startswith("biossl.")]:
        del sys.modules[m]
    sys.path.insert(0, src)
    try:
        import biossl.bench as bench
    finally:
        sys.path.remove(src)
    cell = getattr(bench, "BenchCell", None) or bench._Cell  # named _Cell before 2026-12-02
    return cell, bench.command_line_cells, bench.with_batch_sizes


def _cell(src: str, spec: str, batch: int, overrides: list[str]):
    make, cells, batches = _load(src)
    (label, cfg, *epoch), = batches(cells(spec, overrides), [batch])
    c = make(label, cfg, *epoch)
    c.steps(1)  # warm-up
    return c


def _timed(cell) -> tuple[float, float]:
    r0, w = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    cell._step()
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    return time.perf_counter() - w, r1.ru_utime - r0.ru_utime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="src/ folder of the old tree")
    ap.add_argument("--new", default="src", help="src/ folder of the new tree (also runs e2e-bp)")
    ap.add_argument("--cell", default=CELL)
    ap.add_argument("--reference", default="biossl-t1")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--set", dest="overrides", action="append", default=["train.threads=1"])
    args = ap.parse_args()
    cells = {"old": _cell(args.old, args.cell, args.batch, args.overrides),
             "ref": _cell(args.new, args.reference, args.batch, args.overrides),
             "new": _cell(args.new, args.cell, args.batch, args.overrides)}
    names, times = list(cells), {k: [] for k in cells}
    for r in range(args.rounds):
        for k in names[r % 3:] + names[: r % 3]:
            times[k].append(_timed(cells[k]))
    for i, what in ((0, "wall"), (1, "user CPU")):
        for num, den in (("old", "ref"), ("new", "ref"), ("new", "old")):
            v = [a[i] / b[i] for a, b in zip(times[num], times[den])]
            q = statistics.quantiles(v, n=4)
            print(f"{what:8} {num}/{den}: median {statistics.median(v):.3f} (quartiles {q[0]:.3f}–{q[2]:.3f})")
        print(f"{what:8} ms: " + ", ".join(f"{k} {statistics.median(x[i] for x in times[k]) * 1e3:.0f}"
                                        for k in names))


if __name__ == "__main__":
    main()
