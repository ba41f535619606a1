"""A non-editable install in a fresh virtual environment gives every command the README
shows, run from a folder outside the checkout: the recipes and suites ship in the wheel."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_wheel_in_a_fresh_venv_runs_from_any_folder(tmp_path):
    t0 = time.perf_counter()
    # Build from a copy of the project, so the checkout gets no build/ or egg-info.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # torch, numpy, … come from the system site-packages; biossl itself only from the venv.
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"  # never the network
    # No pip of its own: the system pip and setuptools (seen through the system site) build it.
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp_path, env)
    py, biossl = venv / "bin" / "python", venv / "bin" / "biossl"
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", project], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"  # neither the checkout nor the project copy
    elsewhere.mkdir()
    where = _run([py, "-c", "import biossl, biossl.config as c; print(biossl.__file__); print(c.RECIPES_DIR)"],
                 elsewhere, env).stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(where[0]) == site / "biossl" / "__init__.py"  # the installed copy, not /work/…/src
    assert Path(where[1]) == site / "biossl" / "configs"

    listed = _run([biossl, "list"], elsewhere, env).stdout
    assert "  fmnist-bp-hinge        BP + contrastive hinge on Fashion-MNIST" in listed
    assert "  fmnist-hinge-cpc       Hinge-loss CPC" in listed
    for suite in ("biossl-table1", "biossl-table2", "clapp-stl10", "fmnist-quick"):
        assert f"  {suite:<16} " in listed.split("suites (biossl compare):")[1]
    assert "biossl-tables.md" in {p.name for p in (site / "biossl" / "configs").iterdir()}

    trained = _run([biossl, "train", "fmnist-bp-hinge", "data.train_subset=256", "train.batch_size=64",
                    "train.epochs=1", "encoder.channels=[4,8,8]", "--out", "run"], elsewhere, env)
    assert '"done": true' in trained.stdout and (elsewhere / "run" / "checkpoint.pt").is_file()
    assert (elsewhere / "run" / "data_source.txt").read_text() == f"{FMNIST}\n"

    assert "usage: biossl compare" in _run([biossl, "compare", "fmnist-quick", "--help"], elsewhere, env).stdout
    assert "usage: biossl bench" in _run([biossl, "bench", "--help"], elsewhere, env).stdout
    keys = _run([py, "-m", "biossl", "config", "fmnist-bp-hinge"], elsewhere, env).stdout
    assert "train.lr = 0.001   [float > 0]\n    Learning rate of every optimizer" in keys
    assert time.perf_counter() - t0 < 120
