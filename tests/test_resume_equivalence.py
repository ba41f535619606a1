"""Through the trainer: a run interrupted and resumed ends bit-identical to the same run
never interrupted (CPU, fp32 and bf16), for the rules whose state is more than weights:
CLAPP on saccade grids (its objective's own generator, per-stage optimizers, both modes),
DTP (feedback warm-up, inverse optimizers, noise draws), and bf16 autocast. Also a real
SIGTERM in a child process, then `biossl train --resume`.

What holds for bf16: on the CPU, autocast's bf16 kernels are deterministic, so a resumed
bf16 run equals the uninterrupted one bit for bit, as in fp32. (On a GPU, kernels that
use atomics may differ run to run whether or not the run was resumed.)
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import biossl
from biossl.config import load_config
from biossl.train import TrainingInterrupted, train

DIGITS = ["train.device=cpu", "data.name=digits", "data.download=false", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
          "train.batch_size=32", "train.epochs=2", "train.max_steps_per_epoch=4",
          "train.checkpoint_every=100", "train.log_every=1", "train.threads=1"]
SACCADES = ["views.patch=4", "views.stride=2", "train.batch_size=16"]


def assert_identical(a, b, where="rule"):
    """Nested state (dicts, lists, tensors, numbers) equal everywhere; keys compared first."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def metric_rows(run_dir: Path) -> list[dict]:
    """Logged rows without the wall-clock fields (time, images/s)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in rows]


@pytest.mark.parametrize("recipe,extra,stop", [
    ("fmnist-clapp", SACCADES, 3),                                          # mid epoch 0
    ("fmnist-clapp", SACCADES + ["transport.name=explicit"], 5),                 # mid epoch 1
    ("fmnist-clapp-s", SACCADES, 4),                                        # at the epoch boundary
    ("fmnist-dtp-hinge", ["transport.inverse_warmup=3"], 2),                    # inside the warm-up
    ("fmnist-dtp-hinge", ["transport.inverse_warmup=3", "transport.noise_std=0.05"], 5),
    ("fmnist-bp-hinge", ["transport.name=urf", "transport.diagnostics_every=3"], 5),  # angles measured at 1, 4, 7
    ("fmnist-bp-hinge", ["train.precision=bf16"], 3),
    ("fmnist-clapp", SACCADES + ["train.precision=bf16"], 5),
    ("fmnist-dtp-hinge", ["transport.inverse_warmup=0", "train.precision=bf16"], 3),
], ids=["clapp", "clapp-explicit", "clapp-s", "dtp-warmup", "dtp-noise", "urf-angles", "bp-bf16", "clapp-bf16", "dtp-bf16"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, recipe, extra, stop):
    cfg = load_config(recipe, DIGITS + extra)
    whole = train(cfg, tmp_path / "whole", progress=False)
    with pytest.raises(TrainingInterrupted, match="biossl train --resume"):
        train(cfg, tmp_path / "cut", progress=False, stop_after_steps=stop)
    assert final(tmp_path / "cut")["global_step"] == stop and not final(tmp_path / "cut")["done"]
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == whole["steps"] == 8
    a, b = final(tmp_path / "whole"), final(tmp_path / "cut")
    assert_identical(a["rule"], b["rule"])                   # weights, optimizer states, generators
    assert torch.equal(a["view_generator"], b["view_generator"])
    assert b["done"] and b["global_step"] == 8
    assert metric_rows(tmp_path / "whole") == metric_rows(tmp_path / "cut")   # same losses, no duplicates


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGTERM to a running `biossl train`, then `biossl train --resume` in a new process."""
    args = [o for o in DIGITS if not o.startswith(("train.epochs=", "train.max_steps_per_epoch=",
                                                    "train.checkpoint_every=", "train.log_every="))]
    args += ["train.epochs=20", "train.max_steps_per_epoch=20", "train.checkpoint_every=1000", "train.log_every=5"]
    env = {**os.environ, "PYTHONPATH": str(Path(biossl.__file__).parents[1])}
    run = tmp_path / "sig"
    p = subprocess.Popen([sys.executable, "-m", "biossl.cli", "train", "fmnist-bp-hinge", *args, "--out", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0, err                 # it did not finish what was asked
    assert "SIGTERM" in err and "--resume" in err
    cut = final(run)
    assert not cut["done"] and 5 <= cut["global_step"] < 400   # stopped early, checkpoint kept
    p2 = subprocess.run([sys.executable, "-m", "biossl.cli", "train", "--resume", str(run)],
                        capture_output=True, text=True, env=env, timeout=300)
    assert p2.returncode == 0, p2.stderr
    whole = train(load_config("fmnist-bp-hinge", args), tmp_path / "whole", progress=False)
    assert whole["steps"] == 400
    a, b = final(tmp_path / "whole"), final(run)
    assert b["done"] and b["global_step"] == 400
    assert_identical(a["rule"], b["rule"])
    assert metric_rows(tmp_path / "whole") == metric_rows(run)
