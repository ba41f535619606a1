"""Faults that must end in a message naming the problem and the fix, a non-zero exit and
nothing saved lost: a full or read-only disk (real tmpfs mounts), a corrupt checkpoint, bad
YAML in a run's config, divergence, an edited config on resume, DTP's warm-up, eval output."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from biossl.cli import main as cli
from runproc import (TINY, checkpoint, files_snapshot, has_checkpoint, metric_rows, needs_fmnist, run,
                     start, wait_until)

pytestmark = needs_fmnist


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro) → a fresh tmpfs directory (skips where mounting is not allowed)."""
    mounted = []

    def mount(size: str = "4m", ro: bool = False) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(fs: Path) -> Path:
    """Write one file until the file system is full (a real ENOSPC)."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == 28
    return filler


def test_disk_full_while_checkpointing_keeps_the_old_checkpoint(tmpfs):
    fs = tmpfs("4m")
    out = fs / "run"
    p = start("train", "fmnist-bp-hinge", *TINY, "train.epochs=400", "train.log_every=1000",
              "train.checkpoint_minutes=0.0001", "--out", str(out))  # a checkpoint every few steps
    wait_until(lambda: has_checkpoint(out), p, what="the first checkpoint")
    filler = _fill(fs)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "disk full while writing to" in err and "Traceback" not in err
    state = checkpoint(out)  # the previous checkpoint is intact and is the one the message names
    assert f"the previous checkpoint (global step {state['global_step']}) is intact" in err
    assert "free space on that disk" in err and "biossl train --resume" in err
    assert not list(out.glob(".checkpoint.pt.*.tmp"))
    filler.unlink()  # the fix: free space, resume
    r = start("train", "--resume", str(out))
    wait_until(lambda: checkpoint(out)["global_step"] > state["global_step"] + 8, r, what="progress")
    r.send_signal(signal.SIGTERM)
    _, err = r.communicate(timeout=120)
    assert r.returncode == 143, err


def test_read_only_out_is_a_message(tmpfs):
    ro = tmpfs("1m", ro=True)
    r = run("train", "fmnist-bp-hinge", *TINY, "--out", str(ro / "run"))
    assert r.returncode == 2
    assert "read-only file system" in r.stderr and "give a --out directory you can write" in r.stderr
    assert "Traceback" not in r.stderr


def _tiny_run(out: Path, *extra: str) -> None:
    assert cli(["train", "fmnist-bp-hinge", *TINY, "train.epochs=1", *extra, "--out", str(out)]) == 0


def test_corrupt_checkpoint_says_what_is_lost_and_the_fix_works(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated
    before = files_snapshot(out)
    capfd.readouterr()
    assert cli(["train", "--resume", str(out)]) == 2
    err = capfd.readouterr().err
    assert "is corrupt and cannot be read" in err and "Lost: the training state" in err
    assert "config.yaml and metrics.jsonl" in err and "intact" in err
    assert cli(["eval", str(out)]) == 2
    assert "is corrupt" in capfd.readouterr().err
    assert files_snapshot(out) == before  # nothing touched
    fix = err.split("Fix: move it aside (")[1].split(")")[0]
    subprocess.run(shlex.split(fix), check=True)
    assert cli(["train", "--resume", str(out)]) == 0  # retrains from step 0 with the same config
    assert checkpoint(out)["global_step"] == 8 and (out / "checkpoint.pt.corrupt").is_file()


def test_bad_yaml_in_a_runs_config_and_the_fix(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)
    good = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(good.replace("train:", "train: [oops"))
    capfd.readouterr()
    assert cli(["train", "--resume", str(out), "train.epochs=2"]) == 2
    err = capfd.readouterr().err
    assert "config.yaml is not valid YAML" in err and "delete it and run biossl train --resume" in err
    assert cli(["eval", str(out)]) == 2 and "not valid YAML" in capfd.readouterr().err
    (out / "config.yaml").unlink()
    assert cli(["train", "--resume", str(out), "train.epochs=2"]) == 0
    assert "rewriting it from the checkpoint's config" in capfd.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text()) == {**yaml.safe_load(good),
                                                                  "train": {**yaml.safe_load(good)["train"], "epochs": 2}}


def test_adam_at_lr_1e6_stops_as_diverged_and_the_advice_works(tmp_path):
    out = tmp_path / "run"
    r = run("train", "fmnist-bp-hinge", *TINY, "train.epochs=3", "train.lr=1e6", "--out", str(out))
    assert r.returncode == 2 and '"done": true' not in r.stdout
    assert "training diverged at epoch 0, step 1 (global step 2): loss" in r.stderr
    assert "over 1000× its running median" in r.stderr
    # the only checkpoint (step 1) holds the weights that blew up: the truth, and a restart
    assert "(global step 1) holds the weights that produced this loss" in r.stderr
    same = run("train", "--resume", str(out))
    assert same.returncode == 2 and "diverges again" in same.stderr
    fix = r.stderr.split("Fix: start again with a lower learning rate: ")[1].strip()
    assert fix == f"biossl train {out / 'config.yaml'} train.lr=0.001 --out {out} --overwrite"
    again = run(*shlex.split(fix)[1:])
    assert again.returncode == 0, again.stderr
    assert checkpoint(out)["done"] and not (out / "diverged.json").exists()


def test_divergence_after_a_checkpoint_resumes_with_a_new_lr_that_applies(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)  # a healthy epoch: checkpoint at global step 8
    capfd.readouterr()
    assert cli(["train", "--resume", str(out), "train.epochs=3", "train.lr=1e6"]) == 2
    err = capfd.readouterr().err
    assert "training diverged at epoch 1, step 1 (global step 10)" in err
    assert "checkpoint.pt is from global step 8 (the loss on its weights was" in err and "is kept" in err
    assert checkpoint(out)["global_step"] == 8
    fix = err.split("Fix: resume it with a lower learning rate (applied to every optimizer): ")[1].split(",")[0]
    assert fix == f"biossl train --resume {out} train.lr=0.001"
    assert cli(["train", "--resume", str(out)]) == 2  # config.yaml still says 1e6: refused
    assert "diverges again" in capfd.readouterr().err
    assert cli(shlex.split(fix)[1:4] + ["train.lr=1e-4"]) == 0
    state = checkpoint(out)
    assert state["done"] and state["global_step"] == 24
    lrs = [g["lr"] for o in state["rule"]["_extra_state"]["optimizers"] for g in o["param_groups"]]
    assert lrs == [1e-4]  # the new lr is in the optimizer, not the checkpoint's old one
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-4
    event = [r for r in metric_rows(out) if r.get("event") == "resume_config_change"]
    assert event == [{"step": 8, "event": "resume_config_change",
                      "changed": {"train.epochs": [1, 3], "train.lr": [0.001, 0.0001]}}]


def test_a_changed_shape_on_resume_is_refused_with_the_keys(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("- 8\n  - 8\n", "- 8\n  - 16\n"))  # encoder.channels
    before = files_snapshot(out)
    capfd.readouterr()
    assert cli(["train", "--resume", str(out), "train.seed=5"]) == 2
    err = capfd.readouterr().err
    assert "encoder.channels: [4, 8, 8] → [4, 8, 16]" in err and "train.seed: 0 → 5" in err
    assert "put those values back" in err and "--out NEW_DIR" in err and "Traceback" not in err
    assert files_snapshot(out) == before


def test_fewer_epochs_than_trained_and_out_with_resume_are_refused(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out, "train.epochs=2")
    capfd.readouterr()
    assert cli(["train", "--resume", str(out), "train.epochs=1"]) == 2
    assert "2 epochs have already been trained" in capfd.readouterr().err
    assert cli(["train", "--resume", str(out), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--out is not used with --resume" in capfd.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_more_epochs_extend_a_finished_run(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))  # the user's edit
    assert cli(["train", "--resume", str(out)]) == 0
    state = checkpoint(out)
    assert state["done"] and state["global_step"] == 16 and state["config"]["train"]["epochs"] == 2
    assert "train.epochs: 1 → 2" in capfd.readouterr().err


def test_greedy_epochs_cannot_change_mid_run(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out, "schedule.name=greedy", "train.epochs=3")  # 3 stages: 1 epoch each
    capfd.readouterr()
    assert cli(["train", "--resume", str(out), "train.epochs=6"]) == 2
    assert "splits train.epochs over the stages" in capfd.readouterr().err


def test_dtp_shorter_than_its_warmup_is_refused_and_eval_says_untrained(tmp_path, capfd):
    dtp = ["encoder.channels=[4,8,8]", "data.train_subset=512", "train.batch_size=64", "train.threads=1",
           "eval.probe_epochs=1", "eval.few_labels=0", "eval.max_train=300", "eval.max_test=200"]
    assert cli(["train", "fmnist-dtp-hinge", *dtp, "train.epochs=3", "--out", str(tmp_path / "a")]) == 2
    err = capfd.readouterr().err
    assert "leaves the encoder untouched for its first 100 steps" in err and "only 24 steps" in err
    assert "lower transport.inverse_warmup below 24" in err
    from biossl.config import load_config
    from biossl.run_eval import evaluate_run
    from biossl.train import TrainingInterrupted, train
    with pytest.raises(TrainingInterrupted):  # stopped inside the warm-up
        train(load_config("fmnist-dtp-hinge", dtp + ["train.epochs=20"]), tmp_path / "b",
              progress=False, stop_after_steps=3)
    capfd.readouterr()
    rows = evaluate_run(tmp_path / "b", progress=False)
    err = capfd.readouterr().err
    assert "WARNING: the encoder is untrained: the run stopped at step 3" in err
    assert "weights still at their random init" in err
    assert "WARNING: the encoder is untrained" in (tmp_path / "b" / "probe.md").read_text()
    trained = [r.probe for r in rows if r.encoder_label != "random-init"]
    assert trained == [r.probe for r in rows if r.encoder_label == "random-init"]


def test_eval_keeps_one_probe_table_per_settings(tmp_path, capfd):
    out = tmp_path / "run"
    _tiny_run(out)
    assert cli(["eval", str(out)]) == 0
    first = (out / "probe.csv").read_bytes()
    assert cli(["eval", str(out), "eval.max_test=100"]) == 0
    assert "probe-max_test=100.csv" in capfd.readouterr().out
    assert (out / "probe.csv").read_bytes() == first  # the default table is not overwritten
    other = json.dumps((out / "probe-max_test=100.csv").read_text())
    assert other != json.dumps(first.decode())
    assert sorted(p.name for p in out.glob("probe*")) == [
        "probe-max_test=100.csv", "probe-max_test=100.md", "probe-max_test=100.png",
        "probe.csv", "probe.md", "probe.png"]


def test_out_under_a_file_is_a_message(tmp_path, capsys):
    (tmp_path / "f").write_text("not a directory")
    assert cli(["train", "fmnist-bp-hinge", *TINY, "--out", str(tmp_path / "f" / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and "give a --out directory you can write" in err


def test_loss_watch_flags_blow_ups_not_a_converged_loss_jumping():
    from biossl.divergence import LossWatch
    w = LossWatch(1000.0)
    assert [w.check(x) for x in [1.0] * 20 + [1e-4] * 60] == [None] * 80
    assert w.check(0.5) is None  # 5000× the recent median, but under 1000× the starting scale
    assert "over 1000× its running median 1" in w.check(2000.0)
    assert w.check(float("nan")) == "loss is nan" and w.check(float("inf")) == "loss is inf"
    fresh = LossWatch(1000.0)
    assert fresh.check(80.0) is None and "1.4e+30 is over 1000×" in fresh.check(1.4e30)  # step 2
    assert LossWatch(None).check(1e30) is None  # the factor test off: only NaN/inf stop


def test_resume_of_a_missing_dir_creates_nothing(tmp_path, capsys):
    assert cli(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "there is no directory" in capsys.readouterr().err and not (tmp_path / "nope").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_permission_denied_out_is_a_message(capsys):
    base = Path(tempfile.mkdtemp(prefix="biossl-ro-"))  # outside root's 0700 pytest tmp dir
    try:
        base.chmod(0o555)
        import biossl.data  # noqa: F401 — imported as root: nobody cannot read root's site-packages
        import biossl.train  # noqa: F401
        from biossl.registry import load_all
        load_all()
        os.seteuid(65534)  # 'nobody' for the call: a real EACCES (root may write anywhere)
        try:
            code = cli(["train", "fmnist-bp-hinge", *TINY, "--out", str(base / "run")])
        finally:
            os.seteuid(0)
        assert code == 2
        err = capsys.readouterr().err
        assert "(permission denied)" in err and "give a --out directory you can write" in err
        assert not (base / "run").exists()
    finally:
        shutil.rmtree(base)

