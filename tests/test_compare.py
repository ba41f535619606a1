"""`biossl compare`: a suite runs every cell, writes md/csv/png, and never re-runs finished cells."""
import pytest

import biossl.compare as compare
import biossl.train as train_mod
from biossl.compare import Cell, Suite, load_suite, run_suite

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
    labels = [r["label"] for r in rows]
    assert "bp-hinge" in labels and "bp-ntxent" in labels
    assert any(l.startswith("random-init") for l in labels)
    md = (tmp_path / "results.md").read_text()
    assert "bp-hinge" in md and "±" in md and "(i)-(iv)" in md
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    hinge = next(r for r in rows if r["label"] == "bp-hinge")
    assert hinge["seeds"] == 2 and hinge["images_seen"] > 0

    def boom(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr(train_mod, "train", boom)
    monkeypatch.setattr("biossl.run_eval.evaluate_run", boom)
    again = run_suite(tiny_suite(), tmp_path, progress=False)
    assert [r["probe_s1"] for r in again] == [r["probe_s1"] for r in rows]


def test_shipped_suites_resolve_every_cell():
    from biossl.registry import RULES
    for name in ("fmnist-quick", "biossl-table1", "biossl-table2", "clapp-stl10"):
        suite = load_suite(name)
        for cell in suite.cells:
            cfg = compare.cell_config(suite, cell, suite.seeds[0])
            assert cfg.rule.name in RULES


def test_unknown_suite_lists_known():
    from biossl.config import ConfigError
    with pytest.raises(ConfigError, match="fmnist-quick"):
        load_suite("nope")


def test_plausibility_of_rule_objective_pairs():
    from biossl.config import load_config
    from biossl.registry import OBJECTIVES, RULES
    from biossl.rules.base import plausibility

    def cond(*ov, config="fmnist-bp-hinge"):
        cfg = load_config(config, list(ov))
        return plausibility(RULES.get(cfg.rule.name).factory, cfg.rule.params,
                            OBJECTIVES.get(cfg.objective.name).factory, cfg.objective.params)
    assert cond() == {"i": False, "ii": True, "iii": False, "iv": True}            # e2e BP + hinge
    assert not cond("objective.name=ntxent")["ii"]
    assert cond("rule.name=rf")["iii"] and not cond("rule.name=rf")["i"]           # FA: no transport, error crosses layers
    assert all(cond("rule.name=gll", "rule.feedback=urf").values())
    assert not cond("rule.name=gll", "rule.feedback=bp")["iii"]
    assert not cond("rule.name=gll", "rule.feedback=urf", "objective.name=ntxent")["ii"]
    assert all(cond(config="fmnist-clapp").values())
    assert not cond(config="fmnist-clapp-s")["iii"]                                # transposed W_pred
