"""Layer-parallel training (biossl.distributed.pipeline): stage groups in separate gloo
processes compute exactly the sequential simultaneous rule, in both modes; with replicas
(stage groups × replicas) exactly the rule on the global batch."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from biossl.assemble import assemble
from biossl.config import ConfigError, load_config
from biossl.distributed.launch import World
from biossl.distributed.pipeline import StagePipeline, part_diagnostics, refusal, serve
from biossl.distributed.stage_split import (balanced_split, chosen_split, group_ranges, update_flops,
                                            update_seconds)
from biossl.rules.base import NonFiniteLoss
from global_batch import global_batch
from runproc import env, needs_fmnist, run, wait_until

CLAPP = ["encoder.channels=[4,8,8]", "train.batch_size=6", "objective.steps=3"]
"""fmnist-clapp on saccade grids (6×6 patches), official coin and W_retro."""
HINGE = ["schedule.name=simultaneous", "encoder.channels=[4,8,8]", "train.batch_size=6",
         "objective.negatives=3"]
"""Layer-wise hinge on augmentation pairs (a 'pairs' objective with a head per stage)."""


def build(config: str, overrides: list[str], steps: int, replicas: int = 1):
    """The rule in float64 and ``steps`` global batches of random images, the same on every
    rank, each as its ``replicas`` shards' view batches (replica j: rows [j·n, (j+1)·n))."""
    cfg = load_config(config, overrides)
    asm = assemble(cfg, torch.device("cpu"))
    rule = asm.rule.double()
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (steps, cfg.train.batch_size, *asm.spec.image_shape),
                           dtype=torch.uint8, generator=g)
    n = cfg.train.batch_size // replicas
    batches = []
    for x in images:
        shards = []
        for j in range(replicas):
            b = asm.recipe(x[j * n:(j + 1) * n], g)
            b.x = b.x.double()
            shards.append(b)
        batches.append(shards if replicas > 1 else shards[0])
    return rule, batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, groups, split, config, overrides, runs, steps, out_dir):
    """One rank of a torchrun-like launch (the environment biossl train reads, the process group
    World.joined forms, the placement World.arranged makes, the rule distributed over the
    replicas of its stage group as biossl.distributed.part does); for each (mode, poison) run in
    turn a fresh rule and pipeline (one launch, several runs)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    launch_world = World.from_env()
    with launch_world.joined():
        w = launch_world.arranged(groups)
        layout = w.layout
        for i, (mode, poison) in enumerate(runs):
            rule, batches = build(config, overrides, steps, layout.replicas)
            ranges = group_ranges(len(rule.spans), split)
            rule.distribute(w.replicas())
            if layout.group:
                serve(rule, layout, ranges, mode, max_in_flight=2)
                continue
            if poison and layout.replica == layout.replicas - 1:
                # a non-finite top stage in one replica: its group must report it, the other
                # replicas' groups stop with it, and every rank exits when told
                with torch.no_grad():
                    rule.encoder.stages[2][0].weight.fill_(float("nan"))
            pipe = StagePipeline(rule, layout, ranges, mode, max_in_flight=2)
            pipe.start_epoch(0)
            rows, error, diag, state = [], None, None, None
            try:
                for b in batches:
                    rows.append(pipe.step(b[layout.replica] if layout.replicas > 1 else b))
                diag = pipe.diagnostics()
                state = pipe.state_dict()
            except NonFiniteLoss as e:
                error = (len(rows), str(e))
            finally:
                pipe.close()
            torch.save({"rows": rows, "diag": diag, "state": state, "error": error},
                       f"{out_dir}/rank{rank}-{i}.pt")


def launch(tmp_path, world, groups, split, config, overrides, modes, steps, poison=False):
    """{mode: {rank of a group 0: what it saved}} (``modes``: names, or (mode, poison) runs:
    then keyed by the run's index)."""
    runs = [m if isinstance(m, tuple) else (m, poison) for m in modes]
    mp.spawn(_worker, args=(world, _free_port(), groups, split, config, overrides, runs, steps,
                            str(tmp_path)), nprocs=world, join=True)
    keys = [m if isinstance(m, str) else i for i, m in enumerate(modes)]
    return {key: {r: torch.load(tmp_path / f"rank{r}-{i}.pt", weights_only=False)
                  for r in range(0, world, groups)} for i, key in enumerate(keys)}


def sequential(config, overrides, steps, replicas: int = 1):
    """The one-process simultaneous rule on the global batches (of ``replicas`` shards)."""
    rule, batches = build(config, overrides, steps, replicas)
    rule.start_epoch(0)
    rows = [rule.step(global_batch(b) if replicas > 1 else b) for b in batches]
    return rule, rows


def assert_same_state(a: dict, b: dict, path: str = "", rtol: float = 1e-12, atol: float = 1e-14) -> None:
    """Equal trees of tensors/numbers (floating tensors to ``rtol``, ``atol``)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}", rtol, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]", rtol, atol)
    elif isinstance(a, torch.Tensor):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=path)
        else:
            assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("config,overrides", [("fmnist-clapp", CLAPP), ("fmnist-gll-hinge", HINGE)],
                         ids=["clapp-grid", "hinge-pairs"])
def test_two_stage_groups_equal_the_sequential_rule(tmp_path, config, overrides):
    """2 gloo processes (stages 0–1 | 2) for 4 steps, sync then async: every parameter, optimizer
    moment, objective generator and probe equals the sequential simultaneous rule's, and the
    last step's per-stage losses too; the weights did move."""
    steps = 4
    got = launch(tmp_path, 2, 2, [2], config, overrides, ["sync", "async"], steps)
    rule, rows = sequential(config, overrides, steps)
    start, _ = build(config, overrides, 1)
    assert not torch.equal(start.encoder.stages[2][0].weight, rule.encoder.stages[2][0].weight)
    for mode, by_rank in got.items():
        run = by_rank[0]
        assert_same_state(run["state"], rule.state_dict())
        for k in ("loss/stage0", "loss/stage1", "loss/stage2", "loss"):
            assert run["diag"][k] == pytest.approx(rows[-1][k], rel=1e-12), (mode, k)
        if mode == "sync":  # every row exact, not only at log steps
            for got_row, row in zip(run["rows"], rows):
                for k in row:
                    assert got_row[k] == pytest.approx(row[k], rel=1e-12), k
        else:  # group 0's own stages are exact in every row; later ones are the newest reported
            for got_row, row in zip(run["rows"], rows):
                assert got_row["loss/stage0"] == pytest.approx(row["loss/stage0"], rel=1e-12)
                # every stage's loss in every row, the first included: replicas agree on the
                # keys of each step's row in one all_reduce (World.agree)
                assert got_row.keys() == row.keys()


@pytest.mark.slow
def test_three_groups_async_equal_the_sequential_rule(tmp_path):
    """One stage per process (3 gloo processes), async: the state after 3 steps is the
    sequential one (the middle group both receives and hands on)."""
    got = launch(tmp_path, 3, 3, [1, 2], "fmnist-clapp", CLAPP, ["async"], 3)["async"][0]
    rule, _ = sequential("fmnist-clapp", CLAPP, 3)
    assert_same_state(got["state"], rule.state_dict())


SGD = ["train.optimizer=sgd", "train.lr=0.05"]
"""SGD, unlike Adam, is not invariant to the gradient's scale: a wrong replica average shows."""


@pytest.mark.slow
def test_groups_times_replicas_equal_the_rule_on_the_global_batch(tmp_path):
    """2 stage groups × 2 replicas (4 gloo processes, rank = replica·2 + group), float64, SGD,
    async: each replica's group 0 trains on its half of every global batch, every stage group
    averages its gradients over its 2 replicas and CLAPP draws its negatives over the global
    batch; after 3 steps both replicas hold exactly the state of the one-process rule on the
    global batch (1e-10), and the logged losses are the global batch's. Then, in the same
    launch, a NaN in one replica's stage group 1: both replicas' groups 0 stop with it at the
    same step, and every rank exits (no rank left waiting)."""
    steps = 3
    cfg = CLAPP + SGD
    got = launch(tmp_path, 4, 2, [2], "fmnist-clapp", cfg, [("async", False), ("async", True)], steps)
    rule, rows = sequential("fmnist-clapp", cfg, steps, replicas=2)
    start, _ = build("fmnist-clapp", cfg, 1)
    assert not torch.equal(start.encoder.stages[2][0].weight, rule.encoder.stages[2][0].weight)
    for r in (0, 2):
        run = got[0][r]
        assert run["error"] is None, run["error"]
        assert_same_state(run["state"], rule.state_dict(), rtol=1e-10, atol=1e-12)
        for k in ("loss/stage0", "loss/stage1", "loss/stage2", "loss"):
            assert run["diag"][k] == pytest.approx(rows[-1][k], rel=1e-10), (r, k)
    stopped = [got[1][r]["error"] for r in (0, 2)]
    assert None not in stopped, f"a replica did not stop: {stopped}"
    assert stopped[0][0] == stopped[1][0] <= 3, stopped  # the same step on both replicas
    assert any("loss of stage 2 is nan" in m for _, m in stopped), stopped


@pytest.mark.slow
def test_a_later_groups_nan_stops_every_rank(tmp_path):
    """A NaN loss in stage group 1 reaches group 0 as NonFiniteLoss naming the stage (sync:
    in the same step; async: within max_in_flight steps) and every process exits."""
    got = launch(tmp_path, 2, 2, [2], "fmnist-clapp", CLAPP, ["sync", "async"], 6, poison=True)
    for mode, by_rank in got.items():
        assert by_rank[0]["error"] is not None, f"{mode}: the NaN was not reported"
        steps_done, message = by_rank[0]["error"]
        assert "loss of stage 2 is nan" in message
        assert steps_done == 0 if mode == "sync" else steps_done <= 3


def test_part_diagnostics_cover_the_rule():
    """The parts' diagnostics over all segments are exactly rule.diagnostics() (rf: feedback
    norms per layer; clapp: W_retro alignment; angles)."""
    rule, batches = build("fmnist-clapp", CLAPP + ["transport.name=rf", "transport.diagnostics_every=1"], 1)
    rule.step(batches[0])
    parts = {**part_diagnostics(rule, range(0, 2)), **part_diagnostics(rule, range(2, 3)),
             **rule.transport.diagnostics()}
    assert parts == rule.diagnostics() and any(k.startswith("fb_norm_ratio/") for k in parts)


def test_balanced_split_and_stage_costs():
    assert balanced_split([1, 10, 10], 2) == [2]
    assert balanced_split([10, 1, 1, 10], 2) == [2]
    assert balanced_split([5, 5, 5, 5], 4) == [1, 2, 3]
    rule, batches = build("fmnist-clapp", CLAPP, 1)
    before = rule.state_dict()
    for measure in (update_flops, update_seconds):
        costs = measure(rule, batches[0])
        assert len(costs) == 3 and all(c > 0 for c in costs)
        assert_same_state(rule.state_dict(), before)  # measuring trained nothing, drew nothing
        assert all(p.grad is None for p in rule.parameters())
    with pytest.raises(ValueError, match="non-empty"):
        group_ranges(3, [0])
    # parallel.group_starts as given, checked against the encoder; None: measured (3 stages → 2 groups)
    assert chosen_split(rule, [1], 2, None) == [1]
    with pytest.raises(ValueError, match="non-empty"):
        chosen_split(rule, [3], 2, None)
    assert chosen_split(rule, None, 2, batches[0]) in ([1], [2])


def test_refusals_name_the_fix():
    rule, _ = build("fmnist-gll-hinge", ["encoder.channels=[4,8,8]"], 1)
    assert "schedule.name=simultaneous" in refusal(rule, 2)
    rule, _ = build("fmnist-clapp", CLAPP, 1)
    assert "at most 3 groups" in refusal(rule, 4)
    assert refusal(rule, 2) is None  # processes the groups do not divide: World.arranged (below)
    with pytest.raises(ConfigError, match="ascending"):
        load_config("fmnist-clapp", ["parallel.stage_groups=3", "parallel.group_starts=[2,1]"])


def test_stage_groups_times_replicas_placement():
    """rank = replica · G + group; the global batch splits over the replicas (not the ranks);
    each replica has its own view stream (none with one replica: a one-process run's); a
    number of processes the groups do not divide is refused with the fix."""
    from biossl.distributed.launch import LaunchError
    w = World(rank=3, size=6, local_rank=3, local_size=6, stage_groups=2)  # 2 groups × 3 replicas
    assert (w.layout.group, w.layout.replica, w.layout.replicas, w.reads_data) == (1, 1, 3, False)
    assert w.layout.replica_ranks(0) == [0, 2, 4] and w.layout.lead == 2
    assert w.shard(48) == 16 and w.view_stream() == (1,)
    with pytest.raises(LaunchError, match=r"3 replicas of this launch \(6 processes.*batch_size=51.*launch 4 processes"):
        w.shard(50)
    one = World(rank=1, size=2, local_rank=1, local_size=2, stage_groups=2)  # 2 groups × 1 replica
    assert one.shard(16) == 16 and one.view_stream() == () and one.replicas().size == 1
    with pytest.raises(LaunchError, match="multiple of 2.*--nproc 2"):
        World().arranged(2)
    with pytest.raises(LaunchError, match="a multiple of 2"):
        World(rank=0, size=3, local_rank=0, local_size=3).arranged(2)


# ----------------------------------------------------------------- biossl train under torchrun
TINY_CLAPP = ["data.train_subset=128", "train.batch_size=16", "encoder.channels=[4,8,8]",
              "train.threads=1", "train.log_every=2", "objective.steps=3"]


def torchrun(*args: str, nproc: int = 2, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "biossl", *args], env=env(), text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
@needs_fmnist
def test_torchrun_train_resumes_in_either_mode(tmp_path):
    """`torchrun --nproc_per_node 2 -m biossl train fmnist-clapp parallel.stage_groups=2` trains
    epoch 1 (rank 0 alone writes the run dir); a one-process resume trains epoch 2; the result
    equals two epochs in one process (the checkpoint is the sequential rule's)."""
    par, seq = tmp_path / "par", tmp_path / "seq"
    p = torchrun("train", "fmnist-clapp", *TINY_CLAPP, "parallel.stage_groups=2", "--out", str(par))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(summary) == 1 and summary[0]["steps"] == 8  # one summary per launch (rank 0's)
    r = run("train", "--resume", str(par), "train.epochs=2", "parallel.stage_groups=1")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("train", "fmnist-clapp", *TINY_CLAPP, "train.epochs=2", "--out", str(seq))
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(par / "checkpoint.pt", weights_only=False)
    b = torch.load(seq / "checkpoint.pt", weights_only=False)
    assert_same_state(a["rule"], b["rule"], rtol=1e-6, atol=1e-8)  # weights, Adam, generators
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"]) == (16, 2)


@pytest.mark.slow
def test_torchrun_refuses_a_non_simultaneous_schedule(tmp_path):
    """A greedy run with stage_groups=2: rank 0 says why and what to set, rank 1 exits
    without hanging, nothing is written."""
    p = torchrun("train", "fmnist-gll-hinge", "parallel.stage_groups=2", "data.train_subset=64",
                 "train.batch_size=16", "--out", str(tmp_path / "run"), timeout=120)
    assert p.returncode != 0
    assert "schedule.name=simultaneous" in p.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
@needs_fmnist
def test_nproc_stage_groups_times_replicas_equal_data_parallel(tmp_path):
    """`biossl train --nproc 4 … parallel.stage_groups=2` (2 groups × 2 replicas) learns exactly
    what `biossl train --nproc 2 …` (data parallel, 2 replicas) learns: the same shards of every
    global batch, the same per-replica view streams, the same gradient averages (bit for bit on
    gloo) — also when SIGTERM stops it mid-run (every rank stops after the same step, rank 0
    saves, says it once, exit status 143) and it resumes with the same command. The checkpoint
    then resumes in one process (parallel.stage_groups=1)."""
    args = ["fmnist-clapp", *TINY_CLAPP, "data.train_subset=1024", "train.device=cpu",
            "train.checkpoint_every=1000"]  # 64 steps
    lp, dp = tmp_path / "lp", tmp_path / "dp"
    p = run("train", "--nproc", "2", *args, "--out", str(dp), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, "-m", "biossl", "train", "--nproc", "4", *args,
                             "parallel.stage_groups=2", "--out", str(lp)], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: (lp / "checkpoint.pt").is_file(), proc, timeout=180, what="the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.count("SIGTERM: stopped at") == 1 and "biossl train --nproc 4 --resume" in err, err[-3000:]
    cut = torch.load(lp / "checkpoint.pt", weights_only=False)["global_step"]
    assert 0 < cut < 64, f"SIGTERM came too late to interrupt the run (step {cut})"
    p = run("train", "--nproc", "4", "--resume", str(lp), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(summary) == 1 and summary[0]["steps"] == 64  # one summary per launch (rank 0's)
    a = torch.load(lp / "checkpoint.pt", weights_only=False)
    b = torch.load(dp / "checkpoint.pt", weights_only=False)
    assert len(a["view_generators"]) == 2  # one view stream per replica (group 0 makes the views)
    assert_same_state(a["rule"], b["rule"], rtol=0, atol=0)
    assert_same_state(a["view_generators"], b["view_generators"])
    rows = [json.loads(ln) for ln in (lp / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(ln) for ln in (dp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in want]  # rank 0 alone logs, redone steps trimmed
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in want], rel=1e-12)
    r = run("train", "--resume", str(lp), "train.epochs=2", "parallel.stage_groups=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "saved by 2 process(es) with 1" in r.stderr
    assert torch.load(lp / "checkpoint.pt", weights_only=False)["global_step"] == 128
