"""`biossl compare`: a suite runs every cell, writes md/csv/png, and never re-runs finished cells."""
import json

import pytest
import torch

import biossl.compare as compare
import biossl.train as train_mod
from biossl.compare import Cell, Suite, load_suite, run_suite
from biossl.evaluate import ProbeRow
from biossl.suite_report import CONDITIONS, plausible_verdict, top_gain
from biossl.suite_result import CellResult, SuiteRow

DIGITS = ["data.name=digits", "encoder.channels=[8,16]", "encoder.pool=[true,true]",
          "train.batch_size=64", "train.epochs=1", "train.threads=1", "train.log_every=5",
          "eval.probe_epochs=3", "eval.few_labels=10"]


def tiny_suite():
    return Suite(name="tiny", seeds=[0, 1], common=DIGITS, cells=[
        Cell("bp-hinge", "fmnist-bp-hinge"),
        Cell("bp-ntxent", "fmnist-bp-ntxent", ["objective.temperature=0.2"]),
    ])


def test_suite_runs_once_and_resumes_nothing(tmp_path, monkeypatch):
    rows = run_suite(tiny_suite(), tmp_path, progress=False)
    labels = [r.label for r in rows]
    assert "bp-hinge" in labels and "bp-ntxent" in labels
    assert any(l.startswith("random-init") for l in labels)
    md = (tmp_path / "results.md").read_text()
    assert "bp-hinge" in md and "±" in md and "(i)-(iv)" in md and "Δ top vs random" in md
    assert "No row meets all four plausibility conditions." in md   # bp: weight transport
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    hinge = next(r for r in rows if r.label == "bp-hinge")
    assert hinge.seeds == 2 and hinge.mean("images_seen") > 0

    def boom(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr(train_mod, "train", boom)
    monkeypatch.setattr("biossl.run_eval.evaluate_run", boom)
    again = run_suite(tiny_suite(), tmp_path, progress=False)
    assert [r.stat("probe", 1) for r in again] == [r.stat("probe", 1) for r in rows]
    def stored(rs):  # the whole typed result, as JSON text (NaN == NaN there)
        return [json.dumps([c.to_json() for c in r.results]) for r in rs]
    assert stored(again) == stored(rows)


def test_shipped_suites_resolve_every_cell():
    """Every cell builds, under its own label and seed, with every one of the suite's common
    overrides and its own (the later winning) in the config it will record."""
    import yaml
    from biossl.config import parse_override
    from biossl.rundir import flat_config, run_config_text
    from biossl.assemble import build_rule, build_encoder
    from biossl.config import SUITES_DIR
    from biossl.registry import DATASETS, OBJECTIVES, VIEWS
    names = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
    assert {"fmnist-quick", "fmnist-long", "fmnist-new-pairs", "biossl-table1", "biossl-table2",
            "clapp-stl10"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert len({c.label for c in suite.cells}) == len(suite.cells), f"{name}: duplicate labels"
        for cell in suite.cells:
            seed = suite.seeds[-1]
            cfg = compare.cell_config(suite, cell, seed)
            assert cfg.name == cell.label and cfg.train.seed == seed
            # the rule builds: its schedule × transport pair works and train.epochs fits it
            spec = DATASETS.get(cfg.data.name).factory
            recipe = VIEWS.build(cfg.views.name, cfg.views.params, tuple(spec.image_shape))
            enc = build_encoder(cfg, recipe, spec, torch.device("cpu"))
            shapes = enc.out_shapes(recipe.sample_shape(tuple(spec.image_shape)))
            build_rule(cfg, enc, lambda i: OBJECTIVES.build(cfg.objective.name, cfg.objective.params, shapes[i]))
            recorded = flat_config(yaml.safe_load(run_config_text(cfg)))
            wanted = {}
            for item in suite.common + cell.overrides:
                keys, value = parse_override(item)
                wanted[".".join(keys)] = value
            for key, value in wanted.items():
                assert recorded[key] == value, f"{name}/{cell.label}: {key}={recorded[key]!r}, set {value!r}"


def test_unknown_suite_lists_known():
    from biossl.config import ConfigError
    with pytest.raises(ConfigError, match="fmnist-quick"):
        load_suite("nope")


def test_plausibility_of_rule_objective_pairs():
    from biossl.config import load_config
    from biossl.registry import OBJECTIVES, SCHEDULES, TRANSPORTS
    from biossl.rules.base import plausibility

    def cond(*ov, config="fmnist-bp-hinge"):
        cfg = load_config(config, list(ov))
        return plausibility(SCHEDULES.get(cfg.schedule.name).factory, TRANSPORTS.get(cfg.transport.name).factory,
                            OBJECTIVES.get(cfg.objective.name).factory, cfg.objective.params)
    assert cond() == {"i": False, "ii": True, "iii": False, "iv": True}            # e2e BP + hinge
    assert not cond("objective.name=ntxent")["ii"]
    assert cond("transport.name=rf")["iii"] and not cond("transport.name=rf")["i"]           # FA: no transport, error crosses layers
    assert all(cond("schedule.name=greedy", "transport.name=urf").values())
    assert not cond("schedule.name=greedy", "transport.name=bp")["iii"]
    assert not cond("schedule.name=greedy", "transport.name=urf", "objective.name=ntxent")["ii"]
    assert all(cond(config="fmnist-clapp").values())
    assert not cond(config="fmnist-clapp-s")["iii"]                                # transposed W_pred
    assert all(cond("transport.name=explicit", config="fmnist-clapp").values())
    dtp = cond(config="fmnist-dtp-hinge")                                          # local targets, head by BP
    assert dtp["i"] and dtp["ii"] and not dtp["iii"]
    assert not cond("transport.name=targets", config="fmnist-cpc")["iii"]          # InfoNCE's W_kᵀ z (the audit found it)
    assert not cond("objective.name=infonce", config="fmnist-clapp")["ii"]         # GIM
    assert not cond("schedule.name=e2e", config="fmnist-clapp")["iii"]             # hinge-CPC: BP between stages
    assert not cond("schedule.name=simultaneous")["iii"]                           # hinge head by BP


def test_a_cell_run_with_another_config_is_refused(tmp_path):
    suite = Suite(name="tiny", seeds=[0], common=DIGITS, cells=[Cell("bp-hinge", "fmnist-bp-hinge")])
    run_suite(suite, tmp_path, progress=False)
    edited = Suite(name="tiny", seeds=[0], common=DIGITS + ["train.lr=0.0002"],
                   cells=[Cell("bp-hinge", "fmnist-bp-hinge")])
    with pytest.raises(compare.ConfigError, match=r"train\.lr: 0\.001 → 0\.0002.*delete that directory"):
        run_suite(edited, tmp_path, progress=False)
    # Deleting the cell re-runs it; the random-init row (which does not depend on lr) is kept.
    import shutil
    shutil.rmtree(tmp_path / "cells" / "bp-hinge-s0")
    rows = run_suite(edited, tmp_path, progress=False)
    assert {r.label for r in rows} >= {"bp-hinge", "random-init (convstack, deform)"}


def test_verdict_names_the_plausible_rows_behind_random_init():
    all4 = {c: True for c in CONDITIONS}

    def row(label, top, rule="gll", plausible=all4):
        stages = [ProbeRow(label, s, 8, p, 50.0, 40.0, "protocol") for s, p in ((1, 60.0), (2, top))]
        cell = CellResult(label, 0, rule, "hinge", "convstack", "deform", stages)
        return SuiteRow(label, [cell], plausible)
    rows = [row("random-init (convstack, deform)", 79.0, rule="none", plausible={}),
            row("gll-rf", 80.5), row("rll-rf", 78.0),
            row("e2e-bp", 70.0, rule="bp", plausible={**all4, "iii": False})]
    assert top_gain(rows[1], rows) == pytest.approx(1.5)
    verdict = plausible_verdict(rows)
    assert "1 of 2" in verdict and "rll-rf (-1.0)" in verdict and "e2e-bp" not in verdict
