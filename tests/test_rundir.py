"""Run directories with real processes and real signals: the lock, refusing a directory that
holds a run, checkpoints that a kill cannot take away, SIGINT/SIGTERM, resume equality."""
import os
import shlex
import signal
import subprocess
import time

import pytest

from biossl.cli import main as cli
from runproc import (TINY, assert_same_state, checkpoint, files_snapshot, has_checkpoint,
                     metric_rows, needs_fmnist, run, start, wait_until)

pytestmark = needs_fmnist
LONG = TINY + ["train.epochs=400"]  # minutes: the tests stop it


def _stop(p: subprocess.Popen, sig=signal.SIGTERM) -> str:
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return err


def test_a_second_train_into_a_locked_dir_names_the_holder(tmp_path):
    out = tmp_path / "run"
    a = start("train", "fmnist-bp-hinge", *LONG, "--out", str(out))
    try:
        wait_until(lambda: len(metric_rows(out)) >= 2, a, what="a metrics row")
        b = run("train", "fmnist-bp-hinge", *TINY, "train.seed=1", "--out", str(out))
        assert b.returncode == 2
        assert f"pid {a.pid}" in b.stderr and "being trained by another process" in b.stderr
        assert "fmnist-bp-hinge" in b.stderr and "since 20" in b.stderr and "another --out" in b.stderr
        r = run("train", "--resume", str(out))  # resuming it while it runs is refused the same way
        assert r.returncode == 2 and f"pid {a.pid}" in r.stderr
        assert a.poll() is None  # the holder trains on undisturbed
    finally:
        err = _stop(a)
    assert a.returncode == 143, err
    steps = [r["step"] for r in metric_rows(out)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved rows
    assert "seed: 0" in (out / "config.yaml").read_text()  # not the second process's config


def test_sigkill_after_the_first_steps_loses_little_and_the_dead_lock_does_not_block(tmp_path):
    out = tmp_path / "run"
    a = start("train", "fmnist-bp-hinge", *LONG, "--out", str(out))
    wait_until(lambda: len(metric_rows(out)) >= 1 and has_checkpoint(out), a, what="the first checkpoint")
    a.kill()  # SIGKILL: no handler runs, the kernel drops the flock
    a.wait(timeout=60)
    saved = checkpoint(out)["global_step"]
    assert saved >= 1  # written after the first step, long before checkpoint_every=1000
    killed_last = metric_rows(out)[-1]["step"]
    stray = out / ".checkpoint.pt.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    b = start("train", "--resume", str(out))
    # the killed run's rows after its checkpoint are still there until the resumed run trims
    # them (they alone may pass saved + 2: then a signal would reach b still in its set-up);
    # the stray file goes only once b holds the lock and handles signals
    wait_until(lambda: not stray.exists() and metric_rows(out)[-1]["step"] > max(saved + 2, killed_last), b,
               what="the resumed run's rows")
    err = _stop(b, signal.SIGINT)
    assert b.returncode == 130, err
    assert "removed 1 temporary file" in err and ".checkpoint.pt.k1ll3d.tmp" in err
    assert not list(out.glob(".*.tmp"))
    steps = [r["step"] for r in metric_rows(out)]
    assert steps == list(range(1, len(steps) + 1))  # rows after the checkpoint were redone, not doubled
    assert "SIGINT: stopped at" in err and "checkpoint written" in err


def test_checkpoint_by_wall_time_between_step_checkpoints(tmp_path):
    out = tmp_path / "run"
    a = start("train", "fmnist-bp-hinge", *TINY, "data.train_subset=8192", "train.epochs=5",
              "train.checkpoint_minutes=0.00001", "--out", str(out))  # 128 steps per epoch
    wait_until(lambda: len(metric_rows(out)) >= 6, a, what="six rows")
    a.kill()
    a.wait(timeout=60)
    state = checkpoint(out)
    # only the wall-time rule writes mid-epoch checkpoints past the first step here
    assert 5 <= state["global_step"] < 128 and state["epoch"] == 0


def test_first_signal_says_at_once_second_stops_now_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    err_file = tmp_path / "stderr.txt"
    slow = ["encoder.channels=[64,128,256]", "train.batch_size=256", "data.train_subset=4096"]
    a = start("train", "fmnist-bp-hinge", *LONG, *slow, "--out", str(out), stderr_file=err_file)
    wait_until(lambda: len(metric_rows(out)) >= 1 and has_checkpoint(out), a, what="the first checkpoint")
    a.send_signal(signal.SIGINT)
    t0 = time.time()
    wait_until(lambda: "SIGINT received: stopping after the current step" in err_file.read_text(), a,
               timeout=5, what="the stop notice")
    notice_s = time.time() - t0
    a.send_signal(signal.SIGINT)  # while that step still runs (a step takes ~1 s here)
    a.wait(timeout=60)
    err = err_file.read_text()
    assert a.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    state = checkpoint(out)  # readable: the second signal took nothing that was saved
    assert state["global_step"] >= 1
    if "second SIGINT" in err:
        assert f"checkpoint {out / 'checkpoint.pt'} from global step {state['global_step']} is intact" in err
    else:  # the step ended between the signals: the first one's checkpoint was written
        assert "checkpoint written" in err
    assert "biossl train --resume" in err
    assert notice_s < 2


def test_sigterm_and_resume_equal_an_uninterrupted_run_with_a_quoted_hint(tmp_path):
    cfg = TINY + ["train.epochs=30"]  # 240 steps
    ref = run("train", "fmnist-bp-hinge", *cfg, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "my runs" / "it's here"  # a space and a quote: the hint must be shell-quoted
    a = start("train", "fmnist-bp-hinge", *cfg, "--out", str(out))
    wait_until(lambda: len(metric_rows(out)) >= 5, a, what="five rows")
    err = _stop(a, signal.SIGTERM)
    assert a.returncode == 143, err
    stopped = checkpoint(out)
    assert not stopped["done"] and 5 <= stopped["global_step"] < 240, err
    hint = err.split("Continue with: ")[1].strip()
    assert hint == f"biossl train --resume {shlex.quote(str(out))}"
    argv = shlex.split(hint)  # exactly what a shell would pass
    r = run(*argv[1:])
    assert r.returncode == 0, r.stderr
    assert_same_state(checkpoint(tmp_path / "ref")["rule"], checkpoint(out)["rule"])
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 241))


@pytest.mark.parametrize("present", ["config.yaml", "metrics.jsonl", "tb", "checkpoint.pt"])
def test_a_dir_with_anything_of_a_run_is_refused_and_left_alone(tmp_path, capsys, present):
    out = tmp_path / "run"
    out.mkdir()
    if present == "tb":
        (out / "tb").mkdir()
        (out / "tb" / "events.out.tfevents.1").write_bytes(b"e")
    else:
        (out / present).write_text("name: mine\n" if present == "config.yaml" else "x\n")
    before = files_snapshot(out)
    assert cli(["train", "fmnist-bp-hinge", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and present in err
    assert f"--resume {out}" in err and "--overwrite" in err
    assert files_snapshot(out) == before


def test_overwrite_says_what_it_deletes(tmp_path, capfd):
    out = tmp_path / "run"
    assert cli(["train", "fmnist-bp-hinge", *TINY, "train.epochs=1", "--out", str(out)]) == 0
    capfd.readouterr()
    assert cli(["train", "fmnist-bp-hinge", *TINY, "train.epochs=1", "train.seed=3", "--out", str(out),
                "--overwrite"]) == 0
    err = capfd.readouterr().err
    assert ("--overwrite: deleting the previous run in " in err and "checkpoint.pt (epoch 1, global step 8)"
            in err and "metrics.jsonl (8 rows)" in err and "tb/" in err and "config.yaml" in err)
    assert len(list((out / "tb").iterdir())) == 1 and len(metric_rows(out)) == 8
    assert checkpoint(out)["config"]["train"]["seed"] == 3


def test_restart_after_a_crash_before_the_first_checkpoint(tmp_path, capfd):
    out = tmp_path / "run"
    assert cli(["train", "fmnist-bp-hinge", *TINY, "train.epochs=1", "--out", str(out)]) == 0
    (out / "checkpoint.pt").unlink()  # what a crash before the first checkpoint leaves
    capfd.readouterr()
    assert cli(["train", "--resume", str(out)]) == 0
    err = capfd.readouterr().err
    assert "no checkpoint yet" in err and "training from step 0" in err
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 9))  # no duplicate rows
    assert len(list((out / "tb").iterdir())) == 1  # no second TensorBoard file


def test_files_are_written_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert cli(["train", "fmnist-bp-hinge", *TINY, "train.epochs=1", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_validated_keys():
    for item, msg in [("train.checkpoint_minutes=0", "train.checkpoint_minutes: must be a finite number > 0, got 0"),
                      ("train.divergence_factor=1", "train.divergence_factor: must be a finite number > 1, got 1")]:
        r = run("train", "fmnist-bp-hinge", item)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
