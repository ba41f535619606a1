"""The command line as a user meets it: what `list`, `config` and `--help` show, and user
mistakes that end in a one-line message and exit status 2 instead of a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biossl.cli import main as cli
from biossl.config import RECIPES_DIR, load_config, recipe_names

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TINY = ["data.train_subset=256", "train.batch_size=64", "train.epochs=1", "encoder.channels=[4,8,8]"]


def test_list_shows_recipes_with_descriptions_and_suites(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["list"]) == 0
    out = capsys.readouterr().out
    recipes = out.split("recipes (biossl train NAME; every key: biossl config NAME):\n")[1].split("suites")[0]
    assert len(recipes.splitlines()) == len(recipe_names()) >= 18
    assert ("  fmnist-hinge-cpc       Hinge-loss CPC (CLAPP paper's baseline): CLAPP hinge on the top "
            "stage, end-to-end BP.\n") in recipes
    assert "  fmnist-quick     17 cells × 1 seeds" in out.split("suites (biossl compare):\n")[1]


def test_config_prints_every_key_with_type_value_default_and_doc(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["config", "fmnist-dtp-hinge", "train.lr=3e-4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{RECIPES_DIR / 'fmnist-dtp-hinge.yaml'}\nDifference target propagation")
    assert "\ntrain.lr = 0.0003   [float > 0; default 0.001]\n    Learning rate of every optimizer" in out
    assert "\ntransport.inverse_warmup = " in out and "\ntrain.device = auto   [str]\n" in out
    entries = [ln for ln in out.splitlines()[3:] if ln and not ln.startswith("    ")]
    docs = [ln for ln in out.splitlines()[3:] if ln.startswith("    ")]
    assert len(entries) > 50 and len(docs) >= len(entries)


def test_config_refuses_a_bad_override(capsys):
    assert cli(["config", "fmnist-bp-hinge", "train.epochs=0"]) == 2
    assert "train.epochs: must be an integer ≥ 1, got 0" in capsys.readouterr().err


def test_train_help_points_to_biossl_config(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["train", "--help"])
    assert e.value.code == 0
    assert "biossl config RECIPE" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "argument --steps: must be ≥ 1, got 0"),
    (["--steps", "-4"], "argument --steps: must be ≥ 1, got -4"),
    (["--steps", "many"], "argument --steps: expected an integer ≥ 1, got 'many'"),
    (["--warmup", "-1"], "argument --warmup: must be ≥ 0, got -1"),
])
def test_bench_refuses_counts_out_of_range(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli(["bench", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_configs_refuses_zero_steps():
    from biossl.bench import bench_configs
    with pytest.raises(ValueError, match="bench needs steps ≥ 1, warmup ≥ 0 and rounds ≥ 1; got steps=0"):
        bench_configs([("a", load_config("fmnist-bp-hinge"))], steps=0)


@pytest.mark.parametrize("override, message", [
    ("train.device=tpu", "train: device 'tpu' is not a device biossl can run on; allowed: auto, cpu, "
                         "cuda, cuda:I, mps"),
    ("train.threads=0", "train.threads: must be an integer ≥ 1, got 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be an integer ≥ 1, got 0"),
    ("train.log_every=0", "train.log_every: must be an integer ≥ 1, got 0"),
    ("eval.batch_size=0", "eval.batch_size: must be an integer ≥ 1, got 0"),
    ("train.lr=nan", "train.lr: must be a finite number > 0, got nan"),
    ("train.epochs=0", "train.epochs: must be an integer ≥ 1, got 0"),
    ("data.train_subset=-5", "data.train_subset: must be an integer ≥ 1, got -5"),
])
def test_train_refuses_out_of_range_values_before_creating_the_run(capsys, tmp_path, override, message):
    assert cli(["train", "fmnist-bp-hinge", override, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == f"biossl: error: {message}\n" or err.startswith(f"biossl: error: {message}")
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_eval_refuses_out_of_range_override(capsys, tmp_path):
    from biossl.rundir import save_run_config
    save_run_config(load_config("fmnist-bp-hinge"), tmp_path)
    assert cli(["eval", str(tmp_path), "eval.batch_size=0"]) == 2
    assert "eval.batch_size: must be an integer ≥ 1, got 0" in capsys.readouterr().err


def test_dtp_with_batchnorm_is_a_message_naming_the_fix(capsys, tmp_path):
    assert cli(["train", "fmnist-dtp-hinge", "encoder.batchnorm=true", *TINY,
                "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biossl: error: stage 1 contains BatchNorm2d, which DTP cannot invert; allowed: ")
    assert "encoder.batchnorm=false" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_message(capsys, tmp_path, device):
    assert cli(["train", "fmnist-bp-hinge", f"train.device={device}", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert (f"train.device='{device}' but no CUDA device is available; use train.device=cpu"
            in capsys.readouterr().err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_index_beyond_the_gpus_is_a_message(capsys, tmp_path):
    n = torch.cuda.device_count()
    assert cli(["train", "fmnist-bp-hinge", f"train.device=cuda:{n}", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert f"has {n} CUDA device(s)" in capsys.readouterr().err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_apple_gpu_is_a_message(capsys, tmp_path):
    assert cli(["train", "fmnist-bp-hinge", "train.device=mps", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "train.device='mps' but MPS (Apple GPU) is not available" in capsys.readouterr().err


def test_empty_data_root_is_refused_not_replaced(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    assert cli(["train", "fmnist-bp-hinge", f"data.root={tmp_path / 'data'}", *TINY,
                "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"  {tmp_path / 'data'}  [data.root, empty]" in err
    assert "train-images-idx3-ubyte.gz or train-images-idx3-ubyte" in err and "drop data.root" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@needs_fmnist
def test_a_run_records_the_dataset_copy_it_read(tmp_path):
    """data.root pointing at a copy is used (not the system copy), and the run says so."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (copy / f).symlink_to(FMNIST / f)
    assert cli(["train", "fmnist-bp-hinge", f"data.root={copy}", *TINY, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "data_source.txt").read_text() == f"{copy}\n"
    assert (tmp_path / "a" / "checkpoint.pt").is_file()


def test_output_piped_into_head_is_not_a_traceback():
    import subprocess
    import sys
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    # `true` exits without reading: every write of biossl meets a closed pipe
    done = subprocess.run(f"{sys.executable} -m biossl config fmnist-bp-hinge | true",
                          shell=True, capture_output=True, text=True, env=env, timeout=600)
    assert done.stderr == "", done.stderr
