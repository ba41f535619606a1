"""Data-parallel training (biossl.distributed): real gloo processes.

The defining check: 2 processes with B images each learn exactly what 1 process learns on
the global batch of 2B, for every rule family — gathered negatives included. The test
controls the view randomness: each rank's views come from its own generator (as in a
launch), and the 1-process batch is the concatenation of the ranks' views in the global
batch's order (pairs: all first views, then all second views; grids: image-major), so any
difference is the rule's. Runs in float64 (the hinge and NT-Xent heads compute their loss
in float32) with SGD + momentum: SGD, unlike Adam, is not invariant to the scale of the
gradient, so a gradient off by the world size shows (lightly #1920 / #1977). Tolerance:
after 3 steps every parameter agrees within 1e-5 × the largest distance any parameter moved
(measured: ≤ 2e-7 where a float32 loss is involved, ~1e-15 in pure float64; pytest -s prints
them); a planted bug moves some parameter ≥ 1e-2 × that distance away.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from global_batch import global_batch
from runproc import env as proc_env
from runproc import needs_fmnist, wait_until

STEPS = 3
PER_RANK = 8  # images per rank: global batch 16
WORLD = 2
TOL = 1e-5   # equal: every parameter within 1e-5 of the largest distance a parameter moved
CAUGHT = 1e-2  # a planted bug: some parameter off by ≥ 1% of it

# family → (recipe, overrides); tiny encoders, SGD (scale-sensitive, see the docstring)
COMMON = ["encoder.channels=[4,8,8]", "train.optimizer=sgd", "train.lr=0.05", "train.seed=3"]
FAMILIES = {
    "e2e-bp-ntxent": ("fmnist-bp-ntxent", []),
    "e2e-bp-hinge-J": ("fmnist-bp-hinge", []),  # 4 negative diagonals: pairs cross the ranks' rows
    "e2e-bp-hinge-all-mean": ("fmnist-bp-hinge", ["objective.negatives=null", "objective.reduction=mean",
                                                 "objective.grad_block=false"]),
    "gll-urf-hinge": ("fmnist-gll-hinge", ["transport.name=urf", "train.epochs=3"]),
    "rll-rf-hinge": ("fmnist-rll-hinge", ["transport.name=rf"]),
    "e2e-dtp-hinge": ("fmnist-dtp-hinge", ["transport.inverse_warmup=1"]),
    "clapp-bp": ("fmnist-clapp", []),
    "clapp-explicit": ("fmnist-clapp", ["transport.name=explicit"]),
    "clapp-s-official": ("fmnist-clapp", ["objective.sampling=both", "objective.negatives=4",
                                          "objective.negative_draw=any_location",
                                          "objective.context_path=transpose"]),
    "gim-infonce": ("fmnist-gim", []),
}
FAST = ("e2e-bp-hinge-J",)


def _config(family: str):
    from biossl.config import load_config
    recipe, extra = FAMILIES[family]
    return load_config(recipe, COMMON + extra + ["train.device=cpu"])


def _rank_views(family: str, step: int, rank: int):
    """Rank ``rank``'s ViewBatch of ``step``: its own images and its own view generator."""
    from biossl.assemble import build_inputs
    from biossl.seeds import generator
    cfg = _config(family)
    spec, recipe, _ = build_inputs(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1000 * step + 17)
    images = torch.randint(0, 256, (WORLD * PER_RANK, *spec.image_shape), dtype=torch.uint8, generator=g)
    mine = images[rank * PER_RANK:(rank + 1) * PER_RANK]
    views = generator(cfg.train.seed, "views", rank, step)
    batch = recipe(mine, views)
    batch.x = batch.x.double()
    return batch


def _global_views(family: str, step: int):
    """The 1-process batch: the ranks' views concatenated in the global batch's order."""
    return global_batch([_rank_views(family, step, r) for r in range(WORLD)])


def _train_rule(family: str, replicas=None, poison_rank: int | None = None) -> dict:
    """STEPS steps of the family's rule (as this rank, or as one process on the global batch).
    ``poison_rank``: that rank's first views are NaN at step 1 (its loss alone is not finite)."""
    from biossl.assemble import assemble
    from biossl.rules.base import NonFiniteLoss
    torch.set_default_dtype(torch.float64)
    try:
        cfg = _config(family)
        rule = assemble(cfg, torch.device("cpu")).rule
        if replicas is not None:
            rule.distribute(replicas)
        rule.train()
        losses = []
        for step in range(STEPS):
            rule.start_epoch(min(step, rule.num_epochs() - 1))  # greedy: a new stage each step
            batch = _rank_views(family, step, replicas.rank) if replicas is not None else _global_views(family, step)
            if replicas is not None and replicas.rank == poison_rank and step == 1:
                batch.x[: batch.n] = float("nan")
            try:
                losses.append(rule.step(batch)["loss"])
            except NonFiniteLoss as e:
                return {"stopped": step, "message": str(e)}
        return {"state": {k: v.detach().clone() for k, v in rule.state_dict().items()
                          if isinstance(v, torch.Tensor)}, "losses": losses}
    finally:
        torch.set_default_dtype(torch.float32)


# ---- gathers with lightly's bugs (each must make the equality test fail) ------------------
def _variant(name: str):
    import torch.distributed as dist

    from biossl.distributed.replicas import ProcessReplicas

    class NoCrossRankGradient(ProcessReplicas):
        """lightly #1528: the gather's backward keeps only this rank's own gradient at its
        rows (the terms other ranks computed against them never reach it)."""

        def rows(self, t):
            out = [torch.empty_like(t) for _ in range(self.size)]
            dist.all_gather(out, t.detach().contiguous())
            out[self.rank] = t
            return torch.cat(out)

    class UnscaledShare(ProcessReplicas):
        """lightly #1920 / #1977: the ranks' gradients average to 1/world_size of the global
        one (each rank's loss is its bare share; DDP's averaging divides once more)."""

        @property
        def loss_scale(self) -> float:
            return 1.0

    class UnshiftedRows(ProcessReplicas):
        """lightly #1176: positives looked up at the local indices in the gathered batch (no
        rank·n offset), so rank 1's anchors are paired with rank 0's images."""

        def own(self, n: int) -> slice:
            return slice(0, n)

    return {"correct": ProcessReplicas, "nan_on_rank_1": ProcessReplicas,
            "no_cross_rank_gradient": NoCrossRankGradient,
            "unscaled_share": UnscaledShare, "unshifted_rows": UnshiftedRows}[name]()


def _worker(rank: int, port: int, cases: list[tuple[str, str]], out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left waiting (the bug the NaN case looks for) fails the test in a minute, not 30
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        for family, variant in cases:
            try:
                res = _train_rule(family, _variant(variant), 1 if variant == "nan_on_rank_1" else None)
            except Exception:  # deterministic: every rank fails alike; the test shows it
                import traceback
                res = {"error": traceback.format_exc()}
            torch.save(res, Path(out_dir) / f"{family}.{variant}.{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def _run_ranks(cases: tuple[tuple[str, str], ...]) -> dict:
    """Every case trained by WORLD real gloo processes (forked: no re-import of torch)."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        mp.start_processes(_worker, args=(_free_port(), list(cases), out), nprocs=WORLD,
                           start_method="fork")
        print(f"\n{len(cases)} case(s) × {STEPS} steps in {WORLD} processes: {time.perf_counter() - t0:.1f}s")
        return {c: [torch.load(Path(out) / f"{c[0]}.{c[1]}.{r}.pt") for r in range(WORLD)] for c in cases}


@functools.lru_cache(maxsize=None)
def _one_process(family: str) -> dict:
    return _train_rule(family)


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    worst, where = 0.0, ""
    for k, v in a.items():
        if v.is_floating_point():
            d = (v - b[k]).abs().max().item() if v.numel() else 0.0
            if d > worst:
                worst, where = d, k
    return worst, where


def _check_equal(family: str, cases) -> None:
    ranks = _run_ranks(cases)[(family, "correct")]
    assert "error" not in ranks[0], ranks[0].get("error")
    ref = _one_process(family)
    moved = _moved(family)
    for r, res in enumerate(ranks):
        diff, where = _max_diff(res["state"], ref["state"])
        print(f"{family} rank {r}: max |Δθ| = {diff:.2e} ({where}) = {diff / moved:.1e} of the "
              f"largest move {moved:.2e}")
        assert diff <= TOL * moved, f"{family} rank {r}: {where} differs by {diff:.3e}"
    # the logged loss (mean over ranks) is the global batch's loss
    mean = [sum(x) / WORLD for x in zip(*(r["losses"] for r in ranks))]
    assert mean == pytest.approx(ref["losses"], rel=1e-6), (mean, ref["losses"])


def _moved(family: str) -> float:
    """How far the reference's 3 steps moved any parameter (the scale of the tolerance)."""
    moved, _ = _max_diff(_one_process(family)["state"], _train_initial(family))
    assert moved > 1e-6, f"{family}: the reference did not train ({moved:.2e}); the test would prove nothing"
    return moved


@functools.lru_cache(maxsize=None)
def _train_initial(family: str) -> dict:
    from biossl.assemble import assemble
    torch.set_default_dtype(torch.float64)
    try:
        rule = assemble(_config(family), torch.device("cpu")).rule
        return {k: v.detach().clone() for k, v in rule.state_dict().items() if isinstance(v, torch.Tensor)}
    finally:
        torch.set_default_dtype(torch.float32)


BUGS = {"no_cross_rank_gradient": "e2e-bp-ntxent",
        # NT-Xent's mean over its own anchors is size × its share without any scale: the bare
        # share only hurts objectives that sum (hinge), so the scale bug is planted there
        "unscaled_share": "e2e-bp-hinge-J",
        "unshifted_rows": "e2e-bp-ntxent"}
FAST_CASES = (tuple((f, "correct") for f in FAST) + (("e2e-bp-ntxent", "correct"),)
              + tuple((f, b) for b, f in BUGS.items()) + (("e2e-bp-hinge-J", "nan_on_rank_1"),))
SLOW_CASES = tuple((f, "correct") for f in FAMILIES if f not in FAST and f != "e2e-bp-ntxent") + tuple(
    ("clapp-bp", b) for b in BUGS)


@pytest.mark.parametrize("family", FAST)
def test_two_processes_equal_one_with_the_global_batch(family):
    _check_equal(family, FAST_CASES)


def test_ntxent_two_processes_equal_one_with_the_global_batch():
    _check_equal("e2e-bp-ntxent", FAST_CASES)


# not slow: the 13 cases run in one fork of 2 processes, ~4 s on 2 idle cores (20 s loaded)
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in FAST and f != "e2e-bp-ntxent"])
def test_every_rule_family_two_processes_equal_one(family):
    _check_equal(family, SLOW_CASES)


@pytest.mark.parametrize("bug", BUGS)
def test_gather_bugs_of_lightly_are_caught(bug):
    """Each of lightly's gather bugs, planted in the replicas an objective uses, breaks the
    equality the correct gather passes (so the equality test would catch it)."""
    family = BUGS[bug]
    ref = _one_process(family)
    good = _run_ranks(FAST_CASES)[(family, "correct")][1]
    bad = _run_ranks(FAST_CASES)[(family, bug)][1]  # rank 1: the offsets bug shows there
    moved = _moved(family)
    assert _max_diff(good["state"], ref["state"])[0] <= TOL * moved
    diff, where = _max_diff(bad["state"], ref["state"])
    print(f"{family} with {bug}: max |Δθ| = {diff:.2e} ({where}) = {diff / moved:.1e} of the largest move")
    assert diff > CAUGHT * moved, f"{bug}: not caught (max |Δθ| {diff:.2e})"


def test_a_loss_not_finite_on_one_rank_stops_every_rank_at_that_step():
    """Rank 1's first views are NaN: only its own loss is not finite (rank 0's terms use its
    own first views and the gathered second views). Both ranks stop at that step with
    NonFiniteLoss; had rank 0 gone on, it would wait in the backward's collective forever."""
    ranks = _run_ranks(FAST_CASES)[("e2e-bp-hinge-J", "nan_on_rank_1")]
    assert [r.get("stopped") for r in ranks] == [1, 1], ranks
    assert "not finite on another replica" in ranks[0]["message"]
    assert "nan" in ranks[1]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("bug", BUGS)
def test_gather_bugs_are_caught_on_clapp(bug):
    ref = _one_process("clapp-bp")
    bad = _run_ranks(SLOW_CASES)[("clapp-bp", bug)][1]
    diff, _ = _max_diff(bad["state"], ref["state"])
    print(f"clapp-bp with {bug}: max |Δθ| = {diff:.2e} = {diff / _moved('clapp-bp'):.1e} of the largest move")
    assert diff > CAUGHT * _moved("clapp-bp"), f"{bug}: not caught on clapp ({diff:.2e})"


# ---- every objective variant, ranks simulated in one process (fast) ---------------------
def _recording(rank: int, size: int, seen: list):
    """First pass of a simulated rank: records what it gathers, returns right-sized rows."""
    from biossl.distributed.replicas import Replicas

    class Recording(Replicas):
        def rows(self, t):
            seen.append(t)
            return t.repeat(size, *[1] * (t.dim() - 1))

    rec = Recording()
    rec.rank, rec.size = rank, size
    return rec


def _simulated(rank: int, size: int, seen: list[list]):
    """Rank ``rank`` of ``size``: its k-th gather returns every rank's k-th gathered tensor
    (live, with their graphs: the sum over ranks of the gradients, like the real backward)."""
    from biossl.distributed.replicas import Replicas

    class Simulated(Replicas):
        def __init__(self):
            self.rank, self.size, self.calls = rank, size, 0

        def rows(self, t):
            parts = [t if i == rank else seen[i][self.calls] for i in range(size)]
            self.calls += 1
            return torch.cat(parts)

    return Simulated()


OBJECTIVE_VARIANTS = {
    # head_init 0.1: L1 distances near τ + δ, so some negatives' hinges are active, some not
    "hinge J wrap mean": ("hinge", dict(negatives=3, negatives_wrap=True, reduction="mean", head_init=0.1), "pairs"),
    "hinge J>N wrap": ("hinge", dict(negatives=20, negatives_wrap=True, head_init=0.1), "pairs"),
    "hinge all-pairs": ("hinge", dict(head_init=0.1), "pairs"),
    "hinge J grad-block": ("hinge", dict(negatives=5, grad_block=True, head_init=0.1), "pairs"),
    "ntxent sum_directions": ("ntxent", dict(reduction="sum_directions", temperature=0.2), "pairs"),
    "clapp coin_counts per_pass any_image": ("clapp", dict(either_divisor="coin_counts", coin="per_pass",
                                                           negative_draw="any_image", negatives=2), "grid"),
    "clapp separate retro": ("clapp", dict(retro_score="separate", negatives=2), "grid"),
    "clapp-s any_location": ("clapp", dict(sampling="both", negatives=5, negative_draw="any_location",
                                           context_path="transpose"), "grid"),
    "clapp on pairs": ("clapp", dict(), "pairs"),
    "infonce sequence": ("infonce", dict(negatives=7, steps=3), "sequence"),
    "infonce grid": ("infonce", dict(negatives=7, steps=2), "grid"),
}


@pytest.mark.parametrize("variant", OBJECTIVE_VARIANTS)
def test_objective_shares_average_to_the_global_loss_and_gradient(variant):
    """3 simulated ranks (3 images each): the mean of the ranks' losses is the global-batch
    loss, and the mean of their gradients (through the gathered rows) is its gradient."""
    from biossl.config import build_config
    from biossl.registry import OBJECTIVES, load_all
    from biossl.views.batch import ViewBatch
    load_all()
    name, params, kind = OBJECTIVE_VARIANTS[variant]
    size, n, ch = 3, 3, 6
    torch.set_default_dtype(torch.float64)
    try:
        cfg = build_config({"objective": {"name": name, **params}}).objective
        shape = {"pairs": (ch, 2, 2), "grid": (ch, 2, 2), "sequence": (ch, 6)}[kind]
        obj = OBJECTIVES.build(name, cfg.params, shape)
        obj.seed_draws(5, 0)
        g = torch.Generator().manual_seed(1)
        rows = {"pairs": 2 * n, "grid": n * 5 * 2, "sequence": n}[kind]
        leaves = [torch.randn(rows, *shape, generator=g).requires_grad_() for _ in range(size)]

        def batch(h, images):
            return ViewBatch(h, images, kind, (5, 2) if kind == "grid" else None)

        if kind == "pairs":
            whole = torch.cat([h[:n] for h in leaves] + [h[n:] for h in leaves])
        else:
            whole = torch.cat(leaves)
        start = obj.draw_state()
        params_ = [q for q in obj.parameters() if q.requires_grad]
        global_loss = obj(whole, batch(whole, size * n))
        want = torch.autograd.grad(global_loss, leaves + params_)
        seen = []
        for r in range(size):  # what each rank gathers
            obj.set_draw_state(start)
            seen.append([])
            obj.distribute(_recording(r, size, seen[-1]))
            obj(leaves[r], batch(leaves[r], n))
        losses = []
        for r in range(size):
            obj.set_draw_state(start)
            obj.distribute(_simulated(r, size, seen))
            losses.append(obj(leaves[r], batch(leaves[r], n)))
        mean = sum(losses) / size
        got = torch.autograd.grad(mean, leaves + params_)
        # hinge and NT-Xent compute their loss in float32 (the head's output is cast)
        tol = 1e-5 if name in ("hinge", "ntxent") else 1e-10
        assert mean.item() == pytest.approx(global_loss.item(), rel=tol)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2)
    finally:
        torch.set_default_dtype(torch.float32)


# ---- the launch: errors that name the fix --------------------------------------------------
def _setup_worker(rank: int, port: int, error: str, out_dir: str) -> None:
    import torch.distributed as dist
    from biossl.distributed.launch import PeerFailed, World
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))

    def set_up():  # rank 0's set-up, interrupted as a signal handler or a user error would
        raise {"exit": SystemExit(143), "interrupt": KeyboardInterrupt(), "error": ValueError("bad")}[error]
    try:
        World(rank, WORLD).from_main(set_up)
        seen = "returned"
    except PeerFailed as e:
        seen = f"peer {e.exit_code}"
    except BaseException as e:
        seen = type(e).__name__
    (Path(out_dir) / f"{rank}").write_text(seen)
    dist.destroy_process_group()


@pytest.mark.parametrize("error,code", [("exit", 143), ("interrupt", 130), ("error", 2)])
def test_a_set_up_stopped_on_rank_0_stops_every_rank_with_its_code(tmp_path, error, code):
    # rank 0's set-up ends by SystemExit (SIGTERM's handler) or KeyboardInterrupt, not only an
    # Exception: the other ranks must hear of it (they waited on the broadcast until timeout)
    mp.start_processes(_setup_worker, args=(_free_port(), error, str(tmp_path)), nprocs=WORLD,
                       start_method="fork")
    seen = [(tmp_path / f"{r}").read_text() for r in range(WORLD)]
    assert seen[1] == f"peer {code}"
    assert seen[0] == {"exit": "SystemExit", "interrupt": "KeyboardInterrupt", "error": "ValueError"}[error]


def test_launch_environment_is_checked():
    from biossl.distributed.launch import LaunchError, World
    assert World.from_env({}).size == 1
    assert World.from_env({"WORLD_SIZE": "1"}).size == 1
    w = World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main) == (3, 4, 1, False)
    with pytest.raises(LaunchError, match="MASTER_ADDR.*torchrun"):
        World.from_env({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_PORT": "1"})
    with pytest.raises(LaunchError, match="WORLD_SIZE is not"):
        World.from_env({"RANK": "1"})
    with pytest.raises(LaunchError, match="outside WORLD_SIZE"):
        World.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h",
                        "MASTER_PORT": "1"})
    # without LOCAL_WORLD_SIZE (not torchrun) the node holds at least this rank's processes
    w = World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                        "MASTER_PORT": "1"})
    assert w.local_size == 2 and w.device("cuda", cuda_count=2) == torch.device("cuda", 1)
    with pytest.raises(LaunchError, match="not an integer"):
        World.from_env({"WORLD_SIZE": "two"})


def test_resume_command_fits_the_launch():
    from biossl.distributed.launch import World
    assert World().resume_command("runs/a") == "biossl train --resume runs/a"
    assert World(rank=1, size=4, local_rank=1, local_size=4).resume_command("r") == \
        "biossl train --nproc 4 --resume r"
    several_nodes = World(rank=5, size=8, local_rank=1, local_size=4).resume_command("r")
    assert "torchrun" in several_nodes and "--nproc" not in several_nodes  # --nproc is one node


def test_batch_split_and_devices_are_checked():
    from biossl.distributed.launch import LaunchError, World
    w = World(rank=1, size=3, local_rank=1, local_size=3)
    assert w.shard(96) == 32
    with pytest.raises(LaunchError, match=r"train.batch_size=64 is the global batch.*batch_size=63"):
        w.shard(64)
    assert w.device("auto", cuda_count=0) == torch.device("cpu")
    assert w.device("cuda", cuda_count=3) == torch.device("cuda", 1)
    # too few GPUs: every rank refuses alike (rank 0, which has a GPU, too: it prints the error)
    for rank in range(3):
        with pytest.raises(LaunchError, match="has 2 GPU.*started 3 processes.*--nproc_per_node 2"):
            World(rank=rank, size=3, local_rank=rank, local_size=3).device("cuda", cuda_count=2)
    with pytest.raises(LaunchError, match="picks its own device"):
        w.device("cuda:0", cuda_count=2)
    assert World().device("cuda:0") is None  # one process: resolved as always


def _biossl(*args, extra_env=None, timeout=240):
    e = proc_env()
    e.update(OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "biossl", *args], env=e, text=True,
                          capture_output=True, timeout=timeout)


def test_half_set_launch_is_refused_with_the_fix(tmp_path):
    r = _biossl("train", "fmnist-bp-hinge", "--out", str(tmp_path / "r"),
                extra_env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert r.returncode == 2, r.stderr
    assert "MASTER_ADDR" in r.stderr and "torchrun --nproc_per_node" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_stray_rank_without_a_launch_is_refused_with_the_message(tmp_path):
    """RANK=1 alone is no launch: that process's error is its own, so it prints it."""
    r = _biossl("train", "fmnist-bp-hinge", "--out", str(tmp_path / "r"), extra_env={"RANK": "1"})
    assert r.returncode == 2, r.stderr
    assert "RANK is set but WORLD_SIZE is not" in r.stderr and "Traceback" not in r.stderr


# ---- torchrun end to end ------------------------------------------------------------------
TINY = ["data.train_subset=256", "train.batch_size=32", "encoder.channels=[4,8,8]", "train.threads=1",
        "train.log_every=1", "train.device=cpu"]


def _torchrun(*args, nproc=2, timeout=300, wait=True):
    e = proc_env()
    e["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "biossl", "train", *args]
    if not wait:
        return subprocess.Popen(cmd, env=e, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(cmd, env=e, text=True, capture_output=True, timeout=timeout)


def _params(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    return state, {k: v for k, v in state["rule"].items() if isinstance(v, torch.Tensor)}


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("recipe,extra", [("fmnist-bp-hinge", ["train.max_steps_per_epoch=4", "train.epochs=2"]),
                                          ("fmnist-clapp", ["train.max_steps_per_epoch=3", "train.epochs=2",
                                                            "train.batch_size=8"])])
def test_torchrun_trains_end_to_end(tmp_path, recipe, extra):
    t0 = time.perf_counter()
    r = _torchrun(recipe, *TINY, *extra, "--out", str(tmp_path / "run"))
    print(f"torchrun {recipe}: {time.perf_counter() - t0:.1f}s")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(summary) == 1 and summary[0]["done"]  # one summary per launch
    state, _ = _params(tmp_path / "run")
    assert len(state["view_generators"]) == 2 and state["global_step"] == summary[0]["steps"]
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, summary[0]["steps"] + 1))  # rank 0 alone logs


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("recipe,extra", [("fmnist-bp-hinge", []), ("fmnist-clapp", ["train.batch_size=16"])])
def test_torchrun_sigterm_resume_equals_uninterrupted(tmp_path, recipe, extra):
    """SIGTERM to torchrun: every rank stops after the same step, rank 0 saves; the resumed
    run ends with the parameters of an uninterrupted 2-process run. Then a 1-process resume of
    a 2-process checkpoint continues it."""
    args = [recipe, *TINY, "data.train_subset=1024", "train.max_steps_per_epoch=30",
            "train.epochs=2", "train.checkpoint_every=1000", *extra]
    t0 = time.perf_counter()
    whole = _torchrun(*args, "--out", str(tmp_path / "whole"))
    t_whole = time.perf_counter() - t0
    assert whole.returncode == 0, whole.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = _torchrun(*args, "--out", str(cut), wait=False)
    wait_until(lambda: (cut / "checkpoint.pt").is_file(), proc, what="the first checkpoint")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped, _ = _params(cut)
    assert 0 < stopped["global_step"] < 60, "SIGTERM came too late to interrupt the run"
    assert err.count("SIGTERM: stopped at") == 1 and err.count("SIGTERM received") == 1, err[-3000:]  # rank 0
    assert proc.returncode != 0
    resumed = _torchrun("--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (_, a), (_, b) = _params(cut), _params(tmp_path / "whole")
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    print(f"uninterrupted {t_whole:.1f}s; stopped at step {stopped['global_step']}; resumed == whole: "
          f"max |Δθ| = {diff:.1e}")
    assert diff == 0.0
    # world size 1 from a 2-process checkpoint: continues at its step with its weights
    one = tmp_path / "one"
    subprocess.run(["cp", "-r", str(cut), str(one)], check=True)
    r = _biossl("train", "--resume", str(one), "train.epochs=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "saved by 2 process(es) with 1" in r.stderr
    state, _ = _params(one)
    assert state["global_step"] == 90 and "view_generators" not in state


@needs_fmnist
@pytest.mark.slow
def test_nproc_convenience_launches_torchrun(tmp_path):
    r = _biossl("train", "--nproc", "2", "fmnist-bp-hinge", *TINY, "train.max_steps_per_epoch=2",
                "train.epochs=1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    state, _ = _params(tmp_path / "run")
    assert len(state["view_generators"]) == 2 and state["global_step"] == 2
    # SIGTERM to biossl reaches torchrun once, torchrun passes it on; the exit status says SIGTERM
    e = proc_env()
    e["OMP_NUM_THREADS"] = "1"
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "biossl", "train", "--nproc", "2", "fmnist-bp-hinge", *TINY,
                             "data.train_subset=2048", "train.max_steps_per_epoch=60", "train.epochs=2",
                             "--out", str(cut)], env=e, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: (cut / "checkpoint.pt").is_file(), proc, what="the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    state, _ = _params(cut)
    assert state["global_step"] < 120 and "biossl train --nproc 2 --resume" in err
    bad = _biossl("train", "--nproc", "3", "fmnist-bp-hinge", *TINY, "train.max_steps_per_epoch=2",
                  "train.epochs=1", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0
    assert "train.batch_size=32 is the global batch" in bad.stderr and bad.stderr.count("global batch, shared") == 1
    assert bad.returncode == 2 and "Traceback" not in bad.stderr  # refused before torchrun starts
