"""`biossl bench` machinery: one process, ratios against the first cell.

The bench runs in a child process: its memory pass switches glibc to mmap-served
allocations (mallopt), which cannot be undone and must not reach the other tests."""
import pytest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import biossl
from biossl.assemble import assemble
from biossl.bench import default_cells, format_bench
from biossl.naming import rule_name

TINY = ["data.name=digits", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
        "train.batch_size=32", "train.threads=1"]

BENCH = """
import sys
from biossl.bench import bench_configs, write_bench_json
from biossl.config import load_config
tiny = {tiny!r}
cells = [("e2e-bp", load_config("fmnist-bp-hinge", tiny)),
         ("gll-urf stage 2", load_config("fmnist-gll-hinge", tiny + ["transport.name=urf", "train.epochs=2"]), 1)]
write_bench_json(bench_configs(cells, steps=3, warmup=1, rounds=1, progress=False), sys.argv[1])
"""


def run_bench(out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(biossl.__file__).parents[1])}
    p = subprocess.run([sys.executable, "-c", BENCH.format(tiny=TINY), str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


def test_bench_rows_are_relative_to_the_first_cell(tmp_path):
    result = run_bench(tmp_path / "bench.json")
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["e2e-bp", "gll-urf stage 2"]
    assert [r["rule"] for r in rows] == ["e2e-bp", "greedy-urf"] and result["machine"]["torch"]
    ref = rows[0]
    for r in rows:
        assert r["step_ms"] > 0 and r["images_per_s"] > 0 and r["batch_size"] == 32
        # every derived field follows from the measured step time of the same row and of the reference
        assert math.isclose(r["images_per_s"], 32 / (r["step_ms"] / 1e3), rel_tol=1e-9)
        assert math.isclose(r["images_per_s_vs_ref"], r["images_per_s"] / ref["images_per_s"], rel_tol=1e-9)
        assert math.isclose(r["step_time_vs_ref"], r["step_ms"] / ref["step_ms"], rel_tol=1e-9)
        assert math.isclose(r["views_share"], r["images_per_s"] / r["views_images_per_s"], rel_tol=1e-9)
        assert 0 < r["views_share"] < 1
        assert r["peak_mib"] >= 0
        if ref["peak_mib"] > 0:
            assert math.isclose(r["peak_mem_vs_ref"], r["peak_mib"] / ref["peak_mib"], rel_tol=1e-9)
    assert ref["images_per_s_vs_ref"] == 1.0 and ref["step_time_vs_ref"] == 1.0
    for r in rows:  # FLOPs counted, achieved throughput follows from the step time
        assert r["gflop_per_step"] > 0
        assert math.isclose(r["achieved_gflops"], r["gflop_per_step"] / (r["step_ms"] / 1e3), rel_tol=1e-9)
    assert result["machine"]["matmul_gflops_fp32"] > 0
    for r in rows:  # one ceiling, sampled between the cells, is the machine's and every row's
        assert math.isclose(r["ceiling_share"], r["achieved_gflops"] / r["matmul_gflops"], rel_tol=1e-9)
        assert round(r["matmul_gflops"], 1) == result["machine"]["matmul_gflops_fp32"]
    # a greedy step at stage 2 runs stage 1 frozen (forward only): fewer FLOPs than e2e's whole backward
    assert rows[1]["gflop_per_step"] < rows[0]["gflop_per_step"]
    table = format_bench(rows)
    assert f"| gll-urf stage 2 | greedy-urf | hinge | {rows[1]['step_ms']:.1f} |" in table
    assert f"| {rows[1]['images_per_s_vs_ref']:.2f} |" in table


def test_default_cells_cover_the_rules_and_build():
    cells = default_cells()
    rules = {rule_name(c) for _, c, _ in cells}
    assert {"e2e-bp", "e2e-rf", "e2e-urf", "e2e-sign", "greedy-urf", "random-urf", "e2e-targets",
            "simultaneous-bp", "simultaneous-explicit"} <= rules
    assert cells[0][0] == "e2e-bp"
    for label, cfg, epoch in cells:  # the schedule epoch selects the GLL stage the label names
        if label.startswith("gll-urf stage"):
            rule = assemble(cfg).rule
            rule.start_epoch(epoch)
            assert rule.schedule.stage + 1 == int(label.rsplit(" ", 1)[1]), label


def test_a_command_line_cell_names_its_schedule_position():
    from biossl.bench import command_line_cell
    from biossl.config import ConfigError
    label, cfg, epoch = command_line_cell("fmnist-gll-hinge@2", ["transport.name=urf"])
    assert (label, epoch, cfg.transport.name) == ("fmnist-gll-hinge@2", 2, "urf")
    assert command_line_cell("fmnist-bp-hinge", [])[::2] == ("fmnist-bp-hinge", 0)
    for bad in ("fmnist-gll-hinge@3", "fmnist-gll-hinge@last"):
        with pytest.raises(ConfigError, match=r"an epoch 0…2 of its schedule"):
            command_line_cell(bad, [])


def test_slow_cells_keep_significant_digits():
    from biossl.bench import _rate
    assert [_rate(x) for x in (0.6757, 4.031, 19.24, 1684.2)] == ["0.676", "4.03", "19.2", "1684"]


def test_flops_of_a_step_count_forward_and_backward_also_for_dtp():
    """A matmul's FLOPs forward and backward, as torch's formulas give them; and a DTP step
    (autograd.grad on a leaf, which FlopCounterMode's module hooks refuse) is counted too."""
    import torch

    from biossl.assemble import assemble
    from biossl.config import load_config
    from biossl.measure import step_flops
    a, b = torch.randn(64, 128, requires_grad=True), torch.randn(128, 32)
    assert step_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 64 * 128 * 32)   # a @ b and ∂/∂a
    asm = assemble(load_config("fmnist-dtp-hinge", TINY + ["train.device=cpu", "transport.inverse_warmup=0"]))
    asm.rule.start_epoch(0)
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    assert step_flops(lambda: asm.rule.step(asm.recipe(x, torch.Generator().manual_seed(0)))) > 0


def test_all_positions_bench_every_greedy_stage_and_cell_overrides_are_its_own():
    from biossl.bench import command_line_cells
    cells = command_line_cells("fmnist-gll-hinge@all train.epochs=6", ["transport.name=urf"])
    assert [(label, epoch) for label, _, epoch in cells] == [
        ("fmnist-gll-hinge greedy-urf@0", 0), ("fmnist-gll-hinge greedy-urf@2", 2),
        ("fmnist-gll-hinge greedy-urf@4", 4)]
    for label, cfg, epoch in cells:  # each position is the stage its epoch trains
        rule = assemble(cfg).rule
        rule.start_epoch(epoch)
        assert rule.schedule.stage == epoch // 2 and cfg.transport.name == "urf"
    # an end-to-end schedule has one phase: @all is epoch 0
    assert [e for _, _, e in command_line_cells("fmnist-bp-hinge@all", [])] == [0]


def test_batch_sizes_multiply_the_cells_batch_major():
    from biossl.bench import command_line_cells, with_batch_sizes
    cells = command_line_cells("fmnist-bp-hinge", []) + command_line_cells("fmnist-gll-hinge@1", [])
    out = with_batch_sizes(cells, [8, 16])
    assert [(label, cfg.train.batch_size, epoch) for label, cfg, epoch in out] == [
        ("fmnist-bp-hinge b8", 8, 0), ("fmnist-gll-hinge@1 b8", 8, 1),
        ("fmnist-bp-hinge b16", 16, 0), ("fmnist-gll-hinge@1 b16", 16, 1)]
    assert cells[0][1].train.batch_size not in (8, 16)  # the originals are untouched
    assert with_batch_sizes(cells, []) == cells


def test_cells_of_one_recipe_and_rule_are_named_by_the_settings_that_differ():
    from biossl.bench import command_line_cells, distinct_labels
    specs = ["fmnist-bp-hinge train.lr=0.01", "fmnist-bp-hinge train.lr=0.002", "fmnist-gll-hinge@1"]
    cells = distinct_labels([c for s in specs for c in command_line_cells(s, ["train.seed=3"])])
    labels = [label for label, _, _ in cells]
    assert labels == ["fmnist-bp-hinge e2e-bp train.lr=0.01", "fmnist-bp-hinge e2e-bp train.lr=0.002",
                      "fmnist-gll-hinge@1"]
    assert len(set(labels)) == len(labels)


def test_a_cells_memory_does_not_depend_on_the_cells_measured_before_it():
    # bench's memory pass runs in a child process, one cell at a time after a warm-up step:
    # measured after a bigger cell (its model, optimizer state and heap) or alone, the same
    from biossl.bench_memory import peaks_in_child
    from biossl.config import load_config
    big = ("e2e-bp", load_config("fmnist-bp-hinge", TINY + ["encoder.channels=[32,64]", "train.batch_size=128"]))
    small = ("gll-urf", load_config("fmnist-gll-hinge", TINY + ["transport.name=urf", "train.epochs=2"]), 1)
    after_big = peaks_in_child([big, small], 2)
    alone = peaks_in_child([small], 2)
    assert after_big[0] > 4 * after_big[1] > 0
    assert abs(after_big[1] - alone[0]) <= 0.1 * alone[0] + 256 * 1024, (after_big, alone)


def test_a_bf16_cell_is_compared_with_the_bf16_matmul():
    from biossl.bench import bench_configs, machine
    from biossl.config import load_config
    rows = bench_configs([("bf16", load_config("fmnist-bp-hinge", TINY + ["train.precision=bf16"]))],
                         steps=1, warmup=0, rounds=1, progress=False)
    assert rows[0]["matmul_dtype"] == "bfloat16" and rows[0]["matmul_gflops"] > 0
    assert "matmul_gflops_bfloat16" in machine("cpu", rows[0]["matmul_gflops"], rows[0]["matmul_dtype"])
