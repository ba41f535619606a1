"""Images/s of layer-parallel training (2 stage groups in 2 gloo processes, 1 thread each)
against the sequential simultaneous rule in one process with 1 thread and with 2 threads,
same config and batches, measured in one run.

Rank 0 times everything, in interleaved rounds (median round kept, so a noisy neighbour
hurts every method alike): the pipeline (rank 1 trains the second group), then the
sequential rule on a copy of the model while rank 1 waits idle in a blocking receive, with
1 thread and with 2 threads. Views are made before timing (the same batches for every method);
the pipeline is timed until its last group finished the last batch. It also prints each
stage's FLOPs and measured update time (1 thread), the split they give, and the speed-up's
ceiling, total time / slowest group's time.

    python benchmarks/bench_layer_parallel.py                       # fmnist-clapp, split by time
    python benchmarks/bench_layer_parallel.py --split 2 --mode sync  # stages 0–1 | 2, blocking
    python benchmarks/bench_layer_parallel.py --steps 4 --rounds 1 encoder.channels=[4,8,8]  # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from biossl.assemble import assemble
from biossl.config import apply_overrides, build_config, load_raw
from biossl.distributed.launch import Layout, World
from biossl.distributed.pipeline import StagePipeline, serve
from biossl.distributed.stage_split import chosen_split, group_ranges, update_flops


def _config(args):
    overrides = list(args.overrides) + ["parallel.stage_groups=2", "train.device=cpu", "train.threads=1"]
    if args.split is not None:
        overrides.append(f"parallel.group_starts=[{args.split}]")
    return build_config(apply_overrides(load_raw(args.config), overrides))


def _batches(asm, n: int, batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, *asm.spec.image_shape), dtype=torch.uint8, generator=g)
    return [asm.recipe(x, g) for _ in range(n)]


def _stage_seconds(rule, batch, repeats: int = 3) -> list[float]:
    """Median seconds of each segment's update (forward, loss, backward, optimizer step)."""
    times = [[] for _ in rule.spans]
    for _ in range(repeats):
        x = batch.x
        for k in range(len(rule.spans)):
            t0 = time.perf_counter()
            x = rule.update(k, x, batch).out
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _worker(rank: int, port: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = _config(args)
    with World.from_env().joined():
        asm = assemble(cfg, torch.device("cpu"))
        torch.set_num_threads(1)
        layout = Layout(rank, 2, 2)
        box = [None]
        if rank == 0:
            batches = _batches(asm, args.warmup + args.steps, cfg.train.batch_size)
            box = [chosen_split(asm.rule, cfg.parallel.group_starts, layout.groups, batches[0])]
        dist.broadcast_object_list(box, src=0)
        ranges = group_ranges(len(asm.rule.spans), box[0])
        if rank:
            serve(asm.rule, layout, ranges, cfg.parallel.pipeline, cfg.parallel.max_in_flight)
            return
        pipe = StagePipeline(asm.rule, layout, ranges, cfg.parallel.pipeline, cfg.parallel.max_in_flight)
        seq = assemble(cfg, torch.device("cpu")).rule
        flops = update_flops(seq, batches[0])
        stage_s = _stage_seconds(seq, batches[0])
        warm, timed = batches[:args.warmup], batches[args.warmup:]
        bs = cfg.train.batch_size

        def pipeline() -> float:
            for b in warm:
                pipe.step(b)
            pipe.wait()
            t0 = time.perf_counter()
            for b in timed:
                pipe.step(b)
            pipe.wait()
            return time.perf_counter() - t0

        def sequential(threads: int):
            def run() -> float:
                torch.set_num_threads(threads)
                for b in warm:
                    seq.step(b)
                t0 = time.perf_counter()
                for b in timed:
                    seq.step(b)
                dt = time.perf_counter() - t0
                torch.set_num_threads(1)
                return dt
            return run

        methods = {"pipeline 2 proc × 1 thread": pipeline, "sequential 1 proc × 1 thread": sequential(1),
                   "sequential 1 proc × 2 threads": sequential(2)}
        seconds = {m: [] for m in methods}
        try:
            for _ in range(args.rounds):
                for m, fn in methods.items():
                    seconds[m].append(fn())
        finally:
            pipe.close()
        rates = {m: len(timed) * bs / statistics.median(s) for m, s in seconds.items()}
        group_s = [sum(stage_s[k] for k in r) for r in ranges]
        result = {"config": args.config, "overrides": args.overrides, "mode": cfg.parallel.pipeline,
                  "max_in_flight": cfg.parallel.max_in_flight, "batch_size": bs, "steps": len(timed),
                  "rounds": args.rounds, "split": box[0], "stage_flops": flops, "stage_seconds": stage_s,
                  "ceiling": sum(stage_s) / max(group_s), "images_per_s": rates,
                  "cpus": os.cpu_count()}
        Path(out).write_text(json.dumps(result, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="fmnist-clapp", help="a simultaneous-schedule recipe")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--split", type=int, default=None,
                    help="first stage of the second group (default: parallel.group_starts, else balanced times)")
    ap.add_argument("--out", default="results/bench_layer_parallel.json")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (e.g. parallel.pipeline=sync)")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(port, args, args.out), nprocs=2, join=True)
    r = json.loads(Path(args.out).read_text())
    base = r["images_per_s"]["sequential 1 proc × 1 thread"]
    print(f"{r['config']} {' '.join(r['overrides'])}: batch {r['batch_size']}, {r['steps']} steps × "
          f"{r['rounds']} rounds, pipeline {r['mode']} (max in flight {r['max_in_flight']}), "
          f"{r['cpus']} CPUs")
    print(f"split: stages 0–{r['split'][0] - 1} | {r['split'][0]}–{len(r['stage_flops']) - 1}; "
          f"per stage GFLOP {[round(f / 1e9, 3) for f in r['stage_flops']]}, "
          f"ms {[round(s * 1e3, 1) for s in r['stage_seconds']]}; ceiling {r['ceiling']:.2f}×")
    for m, v in r["images_per_s"].items():
        print(f"  {m:<32} {v:8.1f} images/s  {v / base:5.2f}×")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
