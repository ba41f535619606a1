"""Training-step benchmark: step time, images/s, peak memory and the views' share of a step,
for several configs measured in one process, each relative to the first (e2e-bp).

Peak memory (biossl.measure): on CUDA the allocated memory above that held before the
steps; on the CPU the peak resident set above the one before the steps, measured after the
timed rounds by a child process, one cell at a time, with large allocations served by mmap
so that the resident set follows live tensors (biossl.bench_memory). Cells are timed in interleaved rounds and the median
round is kept, so a noisy neighbour hurts every cell alike.
"""
from __future__ import annotations

import copy
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from biossl.assemble import assemble
from biossl.config import RunConfig, apply_overrides, build_config, load_raw
from biossl.layout import channels_last
from biossl.measure import matmul_gflops, peak_bytes, reset_peak, seconds_per_call, step_flops
from biossl.naming import rule_name

# (label, recipe, overrides, schedule epoch). GLL's cost depends on the stage it trains,
# so it is measured at its first and last stage (the epoch selects the stage). The
# saccade cells encode patch grids (another input), so they are compared with cpc, their
# own end-to-end baseline, as well as with e2e-bp.
DEFAULT_CELLS = [
    ("e2e-bp", "fmnist-bp-hinge", [], 0),
    ("e2e-rf", "fmnist-bp-hinge", ["transport.name=rf", "transport.diagnostics_every=0"], 0),
    ("e2e-urf", "fmnist-bp-hinge", ["transport.name=urf", "transport.diagnostics_every=0"], 0),
    ("e2e-sign", "fmnist-bp-hinge", ["transport.name=sign", "transport.diagnostics_every=0"], 0),
    ("gll-urf stage 1", "fmnist-gll-hinge", ["transport.name=urf", "transport.diagnostics_every=0"], 0),
    ("gll-urf stage 3", "fmnist-gll-hinge", ["transport.name=urf", "transport.diagnostics_every=0"], 2),
    ("rll-urf", "fmnist-rll-hinge", ["transport.name=urf", "transport.diagnostics_every=0"], 0),
    ("dtp", "fmnist-dtp-hinge", ["transport.diagnostics_every=0", "transport.inverse_warmup=0"], 0),
    ("cpc (grid)", "fmnist-cpc", [], 0),
    ("clapp (grid)", "fmnist-clapp", [], 0),
    ("clapp explicit (grid)", "fmnist-clapp", ["transport.name=explicit"], 0),
    # depth 5: Bio-SSL's conv6 on 32×32 (random images when CIFAR is absent), batch 64
    ("conv6 e2e-bp", "biossl-t1", ["train.batch_size=64"], 0),
    ("conv6 gll-urf stage 5", "biossl-t1", ["train.batch_size=64", "schedule.name=greedy", "transport.name=urf",
                                            "transport.diagnostics_every=0", "train.epochs=5"], 4),
    ("conv6 dtp", "biossl-t1-dtp", ["train.batch_size=64", "transport.diagnostics_every=0",
                                    "transport.inverse_warmup=0"], 0),
]


def _batch(asm, batch_size: int) -> torch.Tensor:
    """Real images when the dataset is available, random uint8 of the right shape otherwise."""
    try:
        from biossl.data import load_dataset
        data = load_dataset(asm.cfg.data.name, asm.spec.ssl_split, root=asm.cfg.data.root, download=False)
        x = data.images[:batch_size]
    except Exception:
        g = torch.Generator().manual_seed(0)
        if len(asm.spec.image_shape) == 2:  # waveform segments (C, T): int16 noise at speech level
            x = torch.randint(-3000, 3000, (batch_size, *asm.spec.image_shape), generator=g, dtype=torch.int16)
        else:
            x = torch.randint(0, 256, (batch_size, *asm.spec.image_shape), generator=g, dtype=torch.uint8)
    return x.to(asm.device)


class BenchCell:
    """One benched configuration: its assembled rule at a schedule position, a fixed random
    batch and a view generator; times its steps and views and measures its peak memory."""

    def __init__(self, label: str, cfg: RunConfig, epoch: int = 0):
        self.label, self.cfg = label, cfg
        self.asm = assemble(cfg)
        self.asm.rule.start_epoch(epoch)
        self.x = _batch(self.asm, cfg.train.batch_size)
        self.gen = torch.Generator(device=self.asm.device).manual_seed(0)
        self.step_times: list[float] = []
        self.view_times: list[float] = []
        self.peak_bytes = 0

    def views(self, n: int) -> float:
        return seconds_per_call(lambda: self.asm.recipe(self.x, self.gen), n, self.asm.device)

    def steps(self, n: int) -> float:
        return seconds_per_call(self._step, n, self.asm.device)

    def _step(self) -> None:
        # the rule scopes train.precision to its forward computations (assemble sets it)
        batch = self.asm.recipe(self.x, self.gen)
        if self.cfg.train.channels_last:  # as the trainer does
            batch.x = channels_last(batch.x)
        self.asm.rule.step(batch)

    def flops(self) -> int:
        """Matmul/conv FLOPs of one step (counted once; the step also trains)."""
        return step_flops(self._step)

    def measure_peak(self, n: int) -> None:
        gc.collect()
        base = reset_peak(self.asm.device)
        self.steps(n)
        self.peak_bytes = max(0, peak_bytes(self.asm.device) - base)


def reference_key(cfg: RunConfig) -> tuple[str, str, int]:
    """The cells whose ratios are comparable share this: encoder, views and batch size (the
    first cell with a key is the reference of the others)."""
    return cfg.encoder.name, cfg.views.name, cfg.train.batch_size


def bench_configs(cells: list[tuple], steps: int = 20, warmup: int = 3,
                  rounds: int = 3, progress: bool = True) -> list[dict]:
    """Measure every (label, config[, schedule epoch]) in this process; each row's ratios are
    against the first cell on the same encoder, views and batch size (``reference``).

    On the CPU peak memory is measured by a child process, one cell at a time after a
    warm-up step (:mod:`biossl.bench_memory`): the same numbers as measuring each cell alone."""
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"bench needs steps ≥ 1, warmup ≥ 0 and rounds ≥ 1; got steps={steps}, "
                         f"warmup={warmup}, rounds={rounds}")
    built = []
    for label, cfg, *epoch in cells:
        c = BenchCell(label, cfg, *epoch)
        if warmup:
            c.steps(warmup)  # allocator warm-up, lazy init
        built.append(c)
    per_round = max(1, steps // rounds)
    device = built[0].asm.device if built else torch.device("cpu")
    # the ceiling in the precision the cells compute in (train.precision=bf16: bf16 matmuls)
    dtype = torch.bfloat16 if built and built[0].cfg.train.precision == "bf16" else torch.float32
    ceilings = []  # sampled every round, between the cells: a shared machine's speed drifts
    for r in range(rounds):
        ceilings.append(matmul_gflops(device, seconds=0.25, dtype=dtype))
        for c in built:
            c.step_times.append(c.steps(per_round))
            c.view_times.append(c.views(per_round))
        if progress:
            print(f"  round {r + 1}/{rounds} done", flush=True)
    flops = [c.flops() for c in built]
    if device.type == "cpu":  # by the resident set, in a fresh process (biossl.bench_memory)
        from biossl.bench_memory import peaks_in_child
        for c, peak in zip(built, peaks_in_child(cells, max(2, steps // 4))):
            c.peak_bytes = peak
    else:  # the allocator's own peak: exact in this process
        for c in built:
            c.measure_peak(max(2, steps // 4))
    ceiling = statistics.median(ceilings)
    out = []
    for c, fl in zip(built, flops):
        st = statistics.median(c.step_times)
        vt = statistics.median(c.view_times)
        out.append({"label": c.label, "rule": rule_name(c.cfg), "objective": c.cfg.objective.name,
                    "encoder": c.cfg.encoder.name, "views": c.cfg.views.name,
                    "batch_size": c.cfg.train.batch_size, "device": str(c.asm.device),
                    "step_ms": st * 1e3, "images_per_s": c.cfg.train.batch_size / st,
                    "views_images_per_s": c.cfg.train.batch_size / vt, "views_share": vt / st,
                    "peak_mib": c.peak_bytes / 2**20,
                    "gflop_per_step": fl / 1e9, "achieved_gflops": fl / 1e9 / st,
                    "matmul_gflops": ceiling, "matmul_dtype": str(dtype).removeprefix("torch."),
                    "ceiling_share": fl / 1e9 / st / ceiling})
    # each row against the first cell on the same encoder, views and batch size (their
    # e2e-bp baseline when the cells list it first): other nets or batches are not comparable
    refs: dict[tuple[str, str, int], dict] = {}
    for c, r in zip(built, out):
        ref = refs.setdefault(reference_key(c.cfg), r)
        r["reference"] = ref["label"]
        r["step_time_vs_ref"] = r["step_ms"] / ref["step_ms"]
        r["images_per_s_vs_ref"] = r["images_per_s"] / ref["images_per_s"]
        r["peak_mem_vs_ref"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
    return out


def machine(device: torch.device | str = "cpu", matmul: float | None = None, dtype: str = "float32") -> dict:
    """The machine and its matmul throughput in ``dtype``: ``matmul`` (GFLOP/s measured
    between the cells, :func:`bench_configs`) or fp32 measured now."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    key = "matmul_gflops_fp32" if dtype == "float32" else f"matmul_gflops_{dtype}"
    info[key] = round(matmul or matmul_gflops(device), 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _rate(x: float) -> str:
    """Images/s with enough digits for slow cells (0.68, 4.03, 19.2) and none wasted on fast ones."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def format_bench(rows: list[dict]) -> str:
    """The bench table; ×ref columns are against each row's ``reference`` (the first cell on
    the same encoder, views and batch size); × matmul is the achieved GFLOP/s over the
    matmul throughput (fp32; bf16 for cells with train.precision=bf16) measured in every
    round between the cells (median)."""
    lines = ["| cell | rule | objective | step ms | images/s | ×ref img/s | peak MiB | ×ref mem | views share "
             "| GFLOP/step | GFLOP/s | × matmul |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rule']} | {r['objective']} | {r['step_ms']:.1f} | "
                     f"{_rate(r['images_per_s'])} | {r['images_per_s_vs_ref']:.2f} | {r['peak_mib']:.0f} | "
                     f"{r['peak_mem_vs_ref']:.2f} | {100 * r['views_share']:.1f} % | "
                     f"{r['gflop_per_step']:.3g} | {r['achieved_gflops']:.0f} | {r['ceiling_share']:.2f} |")
    return "\n".join(lines)


def write_bench_json(rows: list[dict], out: str | Path, **meta) -> dict:
    """Write ``{machine, date, **meta, rows}`` to ``out`` (parents created); returns it."""
    # the throughput ceiling of the device the cells ran on
    ran = machine(rows[0]["device"], rows[0]["matmul_gflops"], rows[0]["matmul_dtype"]) if rows else machine()
    result = {"machine": ran, "date": time.strftime("%Y-%m-%d %H:%M"), **meta, "rows": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    return result


def default_cells(overrides: list[str] = ()) -> list[tuple[str, RunConfig, int]]:
    return [(label, build_config(apply_overrides(load_raw(recipe), ov + list(overrides))), epoch)
            for label, recipe, ov, epoch in DEFAULT_CELLS]


def schedule_positions(cfg: RunConfig) -> list[int]:
    """The first epoch of every phase of ``cfg``'s schedule (greedy: one per stage)."""
    from biossl.registry import ENCODERS, SCHEDULES, load_all
    load_all()
    stages = len(ENCODERS.build(cfg.encoder.name, cfg.encoder.params, 1))  # channels do not matter
    schedule = SCHEDULES.build(cfg.schedule.name, cfg.schedule.params)
    schedule.plan(cfg.train.epochs, stages)
    return schedule.positions()


def command_line_cells(spec: str, overrides: list[str]) -> list[tuple[str, RunConfig, int]]:
    """The cells of one command-line spec ``CONFIG[@POS] [key=value ...]``: a recipe name or
    YAML path with this cell's own overrides (after the common ``overrides``), benched at
    epoch POS of its schedule (a greedy run of 3 stages × 1 epoch: ``@2`` is its last
    stage), or at ``@all``: the first epoch of every phase of it (greedy: every stage)."""
    from biossl.config import ConfigError, load_config
    head, *own = spec.split()
    name, _, at = head.partition("@")
    cfg = load_config(name, list(overrides) + own)
    stem = Path(name).stem + (f" {rule_name(cfg)}" if own else "")
    if not at:
        return [(stem, cfg, 0)]
    if at == "all":
        try:
            positions = schedule_positions(cfg)
        except ValueError as e:  # e.g. greedy epochs that do not split over the stages
            raise ConfigError(f"bench cell {spec!r}: {e}") from None
        return [(f"{stem}@{e}", cfg, e) for e in positions]
    if not at.isdigit() or int(at) >= cfg.train.epochs:
        raise ConfigError(f"bench cell {spec!r}: the position after '@' must be 'all' or an epoch 0…"
                          f"{cfg.train.epochs - 1} of its schedule (train.epochs={cfg.train.epochs})")
    return [(f"{stem}@{at}", cfg, int(at))]


def command_line_cell(spec: str, overrides: list[str]) -> tuple[str, RunConfig, int]:
    """The one cell of ``CONFIG`` or ``CONFIG@E`` (see :func:`command_line_cells`)."""
    cells = command_line_cells(spec, overrides)
    if len(cells) != 1:
        from biossl.config import ConfigError
        raise ConfigError(f"bench cell {spec!r} names {len(cells)} cells; expected one")
    return cells[0]


def with_batch_sizes(cells: list[tuple], batch_sizes: list[int]) -> list[tuple]:
    """Every cell at every batch size (batch-major, so each batch's first cell is its
    reference); labels gain ' b{N}'. No sizes: the cells unchanged."""
    if not batch_sizes:
        return cells
    out = []
    for n in batch_sizes:
        for label, cfg, *epoch in cells:
            c = copy.deepcopy(cfg)
            c.train.batch_size = n
            out.append((f"{label} b{n}", c, *epoch))
    return out


def distinct_labels(cells: list[tuple]) -> list[tuple]:
    """Cells whose labels collide (the same recipe and rule with other overrides, e.g.
    ``speech-cpc encoder.channels=512`` next to ``speech-cpc``) gain the settings in which
    they differ from each other, so every row of the table names its cell."""
    from biossl.rundir import flat_config
    groups: dict[str, list[int]] = {}
    for i, (label, *_) in enumerate(cells):
        groups.setdefault(label, []).append(i)
    out = list(cells)
    for label, idx in groups.items():
        if len(idx) < 2:
            continue
        flat = [flat_config(cells[i][1].to_dict()) for i in idx]
        keys = sorted(k for k in set().union(*flat) if k != "name"
                      and len({repr(f.get(k)) for f in flat}) > 1)
        for i, f in zip(idx, flat):
            extra = " ".join(f"{k}={f.get(k)}" for k in keys)
            out[i] = (f"{label} {extra}".strip(), *cells[i][1:])
    return out


def main(args) -> int:
    if args.configs:
        cells = [cell for c in args.configs for cell in command_line_cells(c, args.overrides)]
        cells = distinct_labels(cells)
    else:
        cells = default_cells(args.overrides)
    cells = with_batch_sizes(cells, args.batch or [])
    print(f"benchmarking {len(cells)} cells, {args.steps} steps each, reference {cells[0][0]}")
    rows = bench_configs(cells, steps=args.steps, warmup=args.warmup)
    result = write_bench_json(rows, args.out)
    print(format_bench(rows))
    print(f"\nmachine: {result['machine']}\nwritten: {args.out}")
    return 0
