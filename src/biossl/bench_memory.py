"""Peak memory of bench cells on the CPU, one cell at a time, in a process of its own.

A step's memory is deterministic, unlike its time, but measuring it by the resident set
needs glibc to serve every large allocation by a fresh mmap (biossl.measure), which slows
a process for good and which the timed steps must not see; and a process that has timed
other cells holds their models, optimizer states and heap. So ``biossl bench`` measures
memory here, in a child process: per cell one warm-up step (allocator, lazy init, Adam
states), then the peak over ``steps`` steps above the resident set before them. Huge pages
are off in the child (``THP_MEM_ALLOC_ENABLE=0``): they would round every large tensor up
to 2 MiB of resident memory without changing which tensors are alive.

    python -m biossl.bench_memory < cells.json   # [{"label", "config", "epoch"}], "steps"
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

CHILD_ENV = {"THP_MEM_ALLOC_ENABLE": "0"}


def peaks(cells: list[tuple], steps: int) -> Iterator[float]:
    """Each cell's peak in bytes (in order), measured in this process (see the module)."""
    import torch

    from biossl.bench import BenchCell
    from biossl.measure import rss_tracks_tensors
    rss_tracks_tensors()
    for label, cfg, *epoch in cells:
        cell = BenchCell(label, cfg, *epoch)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        cell.steps(1)
        cell.measure_peak(steps)
        yield float(cell.peak_bytes)
        del cell
        gc.collect()


def peaks_in_child(cells: list[tuple], steps: int) -> list[float]:
    """:func:`peaks` of ``cells`` measured by a child process (this module's ``main``)."""
    request = {"steps": steps, "cells": [{"label": label, "config": cfg.to_dict(), "epoch": (epoch or [0])[0]}
                                         for label, cfg, *epoch in cells]}
    src = str(Path(__file__).resolve().parents[1])  # this biossl, installed or not
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "biossl.bench_memory"], input=json.dumps(request),
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the memory pass of bench failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    from biossl.config import build_config
    request = json.load(sys.stdin)
    cells = [(c["label"], build_config(c["config"]), c["epoch"]) for c in request["cells"]]
    print(json.dumps(list(peaks(cells, request["steps"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
