"""Real ``python -m biossl`` processes for the run-directory and fault tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed "
                                  "(apt-get install dataset-fashion-mnist)")

TINY = ["data.train_subset=512", "train.batch_size=64", "encoder.channels=[4,8,8]", "train.threads=1",
        "train.log_every=1", "train.checkpoint_every=1000", "eval.probe_epochs=1", "eval.few_labels=0",
        "eval.max_train=300", "eval.max_test=200"]
"""8 steps per epoch of a ~2k-parameter BP + hinge run (tens of ms per step on one core)."""


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    e.pop("BIOSSL_DATA", None)
    return e


def start(*args: str, stderr_file: Path | None = None) -> subprocess.Popen:
    """``python -m biossl ARGS`` in the background (stderr to a file when given)."""
    err = open(stderr_file, "w") if stderr_file else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "biossl", *args], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=err)


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biossl", *args], env=env(), text=True,
                          capture_output=True, timeout=timeout)


def wait_until(cond, proc: subprocess.Popen | None = None, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {err}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def metric_rows(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows = []
    for ln in p.read_text().splitlines():
        try:
            rows.append(json.loads(ln))
        except ValueError:
            pass
    return rows


def checkpoint(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoint.pt").is_file()


def assert_same_state(a: dict, b: dict) -> None:
    keys = sorted(k for k in a if isinstance(a[k], torch.Tensor))
    assert keys and keys == sorted(k for k in b if isinstance(b[k], torch.Tensor))
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def files_snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (but the lock) with its bytes: to show nothing changed."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*"))
            if p.is_file() and p.name != ".lock"}
