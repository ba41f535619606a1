"""`biossl bench` machinery: one process, ratios against the first cell."""
import math

from biossl.bench import bench_configs, default_cells, format_bench
from biossl.config import load_config

TINY = ["data.name=digits", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
        "train.batch_size=32", "train.threads=1"]


def test_bench_rows_are_relative_to_the_first_cell():
    cells = [("e2e-bp", load_config("fmnist-bp-hinge", TINY)),
             ("gll-urf stage 2", load_config("fmnist-gll-hinge", TINY + ["rule.feedback=urf"]), 1)]
    rows = bench_configs(cells, steps=3, warmup=1, rounds=1, progress=False)
    assert [r["label"] for r in rows] == ["e2e-bp", "gll-urf stage 2"]
    assert rows[0]["step_time_vs_ref"] == 1.0 and rows[0]["images_per_s_vs_ref"] == 1.0
    for r in rows:
        assert r["step_ms"] > 0 and 0 < r["views_share"] < 1 and not math.isnan(r["images_per_s"])
    assert "gll-urf stage 2" in format_bench(rows)


def test_default_cells_cover_the_rules_and_build():
    cells = default_cells()
    rules = {c.rule.name for _, c, _ in cells}
    assert {"bp", "rf", "urf", "sign", "gll", "rll", "dtp", "clapp"} <= rules
    assert cells[0][0] == "e2e-bp"
