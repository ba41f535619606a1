"""`biossl compare` continues an interrupted cell from its checkpoint (not from scratch) and
ends with the result of a cell that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import biossl
from biossl.compare import Cell, Suite, cell_config, run_suite
from biossl.train import TrainingInterrupted, train

COMMON = ["train.device=cpu", "data.name=digits", "data.download=false", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
          "train.batch_size=32", "train.epochs=2", "train.max_steps_per_epoch=5", "train.log_every=1",
          "train.checkpoint_every=100", "train.threads=1", "eval.probe_epochs=2", "eval.few_labels=5"]
LABEL = "bp-hinge"


def suite(common=COMMON) -> Suite:
    return Suite(name="tiny", seeds=[0], common=list(common), cells=[Cell(LABEL, "fmnist-bp-hinge")])


def cell_dir(out: Path) -> Path:
    return out / "cells" / f"{LABEL}-s0"


def result(out: Path) -> dict:
    return json.loads((cell_dir(out) / "result.json").read_text())


def rule_state(out: Path) -> dict:
    return torch.load(cell_dir(out) / "checkpoint.pt", weights_only=False)["rule"]


def assert_same_cell(a: Path, b: Path) -> None:
    """Bit-identical trained encoder, and the same probe numbers and images seen."""
    sa, sb = rule_state(a), rule_state(b)
    assert sa.keys() == sb.keys()
    tensors = [k for k in sa if torch.is_tensor(sa[k])]
    assert tensors
    for k in tensors:
        assert torch.equal(sa[k], sb[k]), k
    ra, rb = result(a), result(b)
    for k in ("probe", "knn", "few_label", "images_seen", "protocol"):
        assert ra[k] == rb[k], k
    assert ra["images_seen"] == 10 * 32


def test_interrupted_cell_resumes_and_equals_an_uninterrupted_one(tmp_path):
    run_suite(suite(), tmp_path / "whole", progress=False)
    out = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        train(cell_config(suite(), suite().cells[0], 0), cell_dir(out), progress=False, stop_after_steps=3)
    before = (cell_dir(out) / "metrics.jsonl").read_text().splitlines()
    assert len(before) == 3 and not (cell_dir(out) / "result.json").exists()
    run_suite(suite(), out, progress=False)
    after = (cell_dir(out) / "metrics.jsonl").read_text().splitlines()
    # Resumed, not restarted: the first three rows are the interrupted process's own, wall-clock
    # fields included (a re-run would have measured new times), and no step is logged twice.
    assert after[:3] == before
    assert [json.loads(r)["step"] for r in after] == list(range(1, 11))
    assert_same_cell(tmp_path / "whole", out)


def test_sigterm_to_compare_then_rerun_resumes_the_cell(tmp_path):
    """A real SIGTERM to a running `biossl compare` during its first cell; the re-run finishes it."""
    slow = [o for o in COMMON if not o.startswith(("train.epochs=", "train.max_steps_per_epoch="))]
    slow += ["train.epochs=20", "train.max_steps_per_epoch=20"]
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "tiny", "seeds": [0], "common": slow,
                                          "cells": [{"label": LABEL, "config": "fmnist-bp-hinge"}]}))
    env = {**os.environ, "PYTHONPATH": str(Path(biossl.__file__).parents[1])}
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "biossl.cli", "compare", str(suite_file), "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = cell_dir(out) / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.is_file() or not metrics.read_text():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "SIGTERM" in err, err
    stopped = torch.load(cell_dir(out) / "checkpoint.pt", weights_only=False)
    assert not stopped["done"] and stopped["global_step"] < 400
    before = metrics.read_text().splitlines()[: stopped["global_step"]]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert metrics.read_text().splitlines()[: stopped["global_step"]] == before   # continued, not redone
    run_suite(suite(slow), tmp_path / "whole", progress=False)
    sa, sb = rule_state(tmp_path / "whole"), rule_state(out)
    for k in (k for k in sa if torch.is_tensor(sa[k])):
        assert torch.equal(sa[k], sb[k]), k
    assert result(out)["probe"] == result(tmp_path / "whole")["probe"]
