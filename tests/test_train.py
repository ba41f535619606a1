"""The training loop end to end on real Fashion-MNIST: resume equality, signals, errors."""
import json
from pathlib import Path

import pytest
import torch

from biossl.cli import main as cli
from biossl.config import load_config
from biossl.data import DatasetError, FashionMNIST, locate
from biossl.data.idx import _idx_split_files
from biossl.data.locate import resolve
from biossl.train import TrainingDiverged, TrainingInterrupted, train



def _fmnist_on_disk() -> bool:
    """Whether Fashion-MNIST's training files are found without downloading anything."""
    try:
        resolve(FashionMNIST.source, _idx_split_files("train"), download=False)
    except DatasetError:
        return False
    return True


needs_fmnist = pytest.mark.skipif(not _fmnist_on_disk(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

# data.download=false: a test never starts a download, whatever the machine holds
TINY = ["data.download=false", "encoder.channels=[8,16]", "encoder.pool=[true,true]", "data.train_subset=384",
        "train.batch_size=64", "train.epochs=2", "train.checkpoint_every=4", "train.log_every=2",
        "train.threads=1", "eval.probe_epochs=2", "eval.max_train=600", "eval.max_test=300"]


def tiny(*extra):
    return load_config("fmnist-bp-hinge", TINY + list(extra))


def final_state(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["rule"]


def assert_same_state(a, b):
    keys = [k for k in a if isinstance(a[k], torch.Tensor)]
    assert keys and keys == [k for k in b if isinstance(b[k], torch.Tensor)]
    for k in keys:
        assert torch.equal(a[k], b[k]), k


@needs_fmnist
def test_interrupted_run_resumes_to_identical_result(tmp_path):
    train(tiny(), tmp_path / "a", progress=False)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny(), tmp_path / "b", progress=False, stop_after_steps=7)  # mid-epoch, off-checkpoint
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    out = train(None, tmp_path / "b", resume=True, progress=False)
    assert out["steps"] == 12
    assert_same_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated rows after resume
    assert (tmp_path / "b" / "config.yaml").exists() and (tmp_path / "b" / "tb").is_dir()


@needs_fmnist
def test_same_seed_same_run_other_seed_differs(tmp_path):
    train(tiny("train.epochs=1"), tmp_path / "a", progress=False)
    train(tiny("train.epochs=1"), tmp_path / "b", progress=False)
    train(tiny("train.epochs=1", "train.seed=1"), tmp_path / "c", progress=False)
    a, b, c = (final_state(tmp_path / d) for d in "abc")
    assert_same_state(a, b)
    assert not torch.equal(a["encoder.stages.0.0.weight"], c["encoder.stages.0.0.weight"])


@needs_fmnist
def test_nan_loss_is_a_clear_error(tmp_path, monkeypatch):
    import biossl.objectives.hinge as hinge
    monkeypatch.setattr(hinge, "hinge_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 0, step 0 \(global step 1\): loss is nan"
                       r".* Nothing was saved: .*Fix: start again .*train\.lr=0\.0001 .*--overwrite"):
        train(tiny(), tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_cli_bad_key_and_type(capsys):
    assert cli(["train", "fmnist-bp-hinge", "train.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "train.bogus" in err and "allowed keys" in err
    assert cli(["train", "fmnist-bp-hinge", "train.batch_size=big"]) == 2
    assert "train.batch_size: expected an integer" in capsys.readouterr().err


def test_cli_missing_dataset_names_where_and_how(tmp_path, capsys, monkeypatch):
    # Every place biossl looks is an empty tmp dir, so the outcome does not depend on which
    # datasets this machine holds (with CIFAR-10 installed this would start a full run).
    monkeypatch.delenv("BIOSSL_DATA", raising=False)  # a set $BIOSSL_DATA is the whole search
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_DIRS", (tmp_path / "system",))
    assert cli(["train", "fmnist-bp-hinge", "data.name=cifar10", "views.name=deform",
                "data.download=false", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "dataset 'cifar10': files not found" in err
    assert str(tmp_path / "cache") in err and str(tmp_path / "system") in err
    assert "Not downloaded: download=False" in err
    assert "cifar-10-python.tar.gz" in err and "BIOSSL_DATA=DIR" in err


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert cli(["train", "fmnist-bp-hinge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoint.pt (unreadable))" in err and f"--resume {tmp_path}" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"x"
