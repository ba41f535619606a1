"""The processes of one training run: who this process is, and what only one of them does.

``torchrun --nproc_per_node N -m biossl train CONFIG …`` (or ``biossl train --nproc N …``,
which runs exactly that: biossl.distributed.launcher) starts N processes with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT in their environment. :meth:`World.from_env` reads them (a launch that sets
some but not all is refused with the fix), :meth:`World.joined` forms the process group —
gloo for CPU tensors, NCCL for CUDA tensors — and always leaves it cleanly (a process that
exits without ``barrier(); destroy_process_group()`` aborts intermittently at shutdown).

Rank 0 alone touches the run directory (lock, config, metrics, TensorBoard, checkpoints);
:meth:`World.from_main` runs a set-up step there and hands every rank its result (or its
error, so that all of them stop with the same message). Without a launch (no WORLD_SIZE, or
1) the world is one process and every method is trivial.

Once the resolved config is known, :meth:`World.arranged` places the ranks: as data-parallel
replicas (``parallel.stage_groups`` 1), or as ``stage_groups`` × replicas (layer-parallel,
biossl.distributed.pipeline; :class:`Layout`). Either way the *replicas* of a stage group share
every global batch and average its gradients, and the ranks of stage group 0 — every rank in
data parallel — read the data and run the training loop: the data-side methods (shard, view
stream, agree, gather_objects, main_first) are over them. docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, TypeVar

import torch

from biossl.config import ConfigError
from biossl.distributed.replicas import ONE_PROCESS, ProcessReplicas, Replicas

T = TypeVar("T")

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
HOW = ("launch with torchrun --nproc_per_node N -m biossl train CONFIG … (it sets RANK, "
       "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or biossl train --nproc N CONFIG …")


class LaunchError(ConfigError):
    """The processes were started in a way that cannot work; the message names the fix."""


class PeerFailed(RuntimeError):
    """Rank 0 failed during set-up; the other ranks stop with its message (printed once, by rank 0)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Layout:
    """Where a rank sits in a launch of ``world`` = ``groups`` (stage groups) × replicas ranks:
    rank = replica · groups + group, so a replica's pipeline is ``groups`` consecutive ranks and
    global rank 0 holds group 0 of replica 0 (``groups`` 1: every rank is a replica)."""
    rank: int
    world: int
    groups: int

    @property
    def replicas(self) -> int:
        return self.world // self.groups

    @property
    def group(self) -> int:
        return self.rank % self.groups

    @property
    def replica(self) -> int:
        return self.rank // self.groups

    @property
    def lead(self) -> int:
        """The rank holding group 0 of this rank's replica (the one that reads data)."""
        return self.replica * self.groups

    @property
    def prev(self) -> int:
        return self.rank - 1

    @property
    def next(self) -> int | None:
        return self.rank + 1 if self.group < self.groups - 1 else None

    def replica_ranks(self, group: int) -> list[int]:
        """The ranks training stage group ``group``, one per replica."""
        return [group + self.groups * j for j in range(self.replicas)]


def replica_groups(layout: Layout) -> list:
    """One process group per stage group over its replicas (gradient averaging, gathers; group
    0's is also the training loops' own); every rank must call this, in the same order
    (torch.distributed.new_group is collective)."""
    import torch.distributed as dist
    return [dist.new_group(layout.replica_ranks(g)) for g in range(layout.groups)]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise LaunchError(f"{key}={env[key]!r} is not an integer; {HOW}") from None


def _exit_code(e: BaseException) -> int:
    """The exit status the other ranks take on for rank 0's set-up error ``e``."""
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else 1
    if isinstance(e, KeyboardInterrupt):
        return 130
    return getattr(e, "exit_code", 2)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    stage_groups: int = 1
    """Layer-parallel stage groups per replica (set by :meth:`arranged`; 1: data parallel)."""
    _groups: list = field(default_factory=list, repr=False, compare=False)
    """One process group per stage group over its replicas (layer-parallel with replicas)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "World":
        """This process's place in a torchrun launch (one process when WORLD_SIZE is unset or 1)."""
        if "WORLD_SIZE" not in env:
            stray = [k for k in ("RANK", "LOCAL_RANK") if k in env]
            if stray:
                raise LaunchError(f"{', '.join(stray)} is set but WORLD_SIZE is not: a half-set "
                                  f"launch environment; unset it for one process, or {HOW}")
            return cls()
        size = _int(env, "WORLD_SIZE")
        if size < 1:
            raise LaunchError(f"WORLD_SIZE={size}: it must be ≥ 1; {HOW}")
        if size == 1:
            return cls()
        missing = [k for k in LAUNCH_VARS if k not in env]
        if missing:
            raise LaunchError(f"WORLD_SIZE={size} is set but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not: the processes cannot "
                              f"find each other; {HOW}")
        rank, local = _int(env, "RANK"), _int(env, "LOCAL_RANK")
        if not 0 <= rank < size:
            raise LaunchError(f"RANK={rank} is outside WORLD_SIZE={size} (0…{size - 1}); {HOW}")
        # torchrun sets it; another launcher may not: then at least this rank's own processes
        local_size = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else local + 1
        return cls(rank, size, local, local_size)

    # ---- who does what ----------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and the console."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def layout(self) -> Layout:
        return Layout(self.rank, self.size, self.stage_groups)

    @property
    def reads_data(self) -> bool:
        """Whether this rank runs the training loop: reads its shard of every global batch,
        makes the views and (stage_groups > 1) drives its replica's later stage groups."""
        return self.layout.group == 0

    def resume_command(self, run_dir: str) -> str:
        """The command that continues a run of this launch (same number of processes: the
        views then resume exactly). Several nodes: the same torchrun line on each."""
        if not self.distributed:
            return f"biossl train --resume {run_dir}"
        if self.local_size == self.size:
            return f"biossl train --nproc {self.size} --resume {run_dir}"
        return (f"torchrun … -m biossl train --resume {run_dir} (the same launch of {self.size} "
                f"processes, on every node)")

    def arranged(self, stage_groups: int) -> "World":
        """This world placed as ``stage_groups`` × replicas (every rank calls it, after the
        config is shared: it forms the replicas' process groups). Refuses a world the stage
        groups do not divide, with the fix."""
        if self.size % stage_groups:
            how = (f"a launch of a multiple of {stage_groups} processes (biossl train --nproc "
                   f"{stage_groups} …), or parallel.stage_groups=1"
                   if not self.distributed else
                   f"--nproc_per_node / --nproc a multiple of {stage_groups} (stage_groups × "
                   f"replicas), or parallel.stage_groups dividing {self.size}")
            raise LaunchError(f"parallel.stage_groups={stage_groups} puts each stage group in its own "
                              f"process, but this run has {self.size} process(es), which "
                              f"{stage_groups} stage groups do not divide. Fix: {how}")
        world = replace(self, stage_groups=stage_groups, _groups=[])
        if stage_groups > 1 and world.layout.replicas > 1:
            world._groups = replica_groups(world.layout)
        return world

    def replicas(self) -> Replicas:
        """The data-parallel replicas this rank's rule averages over: the ranks holding the same
        stage group (one replica: the identity)."""
        if self.layout.replicas == 1:
            return ONE_PROCESS
        return ProcessReplicas(self._loop_group() if self.stage_groups == 1 else self._groups[self.layout.group])

    def _loop_group(self):
        """The process group of the ranks that run the training loop (None: all of them)."""
        return self._groups[0] if self._groups else None

    def shard(self, batch_size: int, what: str = "train.batch_size") -> int:
        """Rows of every global batch each replica trains on: batch_size / replicas
        (this rank's are rows [replica·shard, (replica+1)·shard))."""
        n, g = self.layout.replicas, self.stage_groups
        if batch_size % n:
            lower = [d for d in range(n, 0, -1) if batch_size % d == 0][0]
            near = n * max(1, round(batch_size / n))
            who = (f"the {n} processes of this launch" if g == 1 else
                   f"the {n} replicas of this launch ({self.size} processes / parallel.stage_groups={g})")
            fix = (f"launch {lower} process(es)" if g == 1 else f"launch {lower * g} processes")
            raise LaunchError(
                f"{what}={batch_size} is the global batch, shared by {who}, but it does not split "
                f"into {n} equal parts. Fix: {what}={near} (a multiple of {n}), or {fix}")
        return batch_size // n

    def view_stream(self) -> tuple[int, ...]:
        """The seed index of this replica's view stream (biossl.seeds 'views'): none with one
        replica (the stream of every single-process run), the replica otherwise."""
        return (self.layout.replica,) if self.layout.replicas > 1 else ()

    def device(self, name: str, cuda_count: int | None = None) -> torch.device | None:
        """This process's device for ``train.device`` (None: resolve as one process does).
        Under a launch a GPU run uses cuda:LOCAL_RANK, one GPU per process."""
        if not self.distributed:
            return None
        cuda_count = torch.cuda.device_count() if cuda_count is None else cuda_count
        if name == "auto":
            name = "cuda" if cuda_count else "cpu"
        if name == "cpu":
            return torch.device("cpu")
        if name == "cuda":
            if cuda_count == 0:
                raise LaunchError("train.device=cuda but no CUDA device is available; use train.device=cpu")
            if self.local_size > cuda_count:  # decided alike on every rank: rank 0 prints it
                raise LaunchError(
                    f"this node has {cuda_count} GPU(s) but the launch started {self.local_size} "
                    f"processes on it; each process needs its own GPU. Fix: "
                    f"--nproc_per_node {cuda_count} (or fewer), or train.device=cpu")
            return torch.device("cuda", self.local_rank)
        raise LaunchError(f"train.device={name!r} under a launch of {self.size} processes: each "
                          f"process picks its own device; use train.device=auto, cuda (cuda:LOCAL_RANK "
                          f"per process) or cpu")

    # ---- the process group ------------------------------------------------------------
    @contextlib.contextmanager
    def joined(self, agreed: tuple[type[BaseException], ...] = ()) -> Iterator["World"]:
        """The process group for the ``with`` block, always destroyed at its end; with a
        barrier first when every rank ends the block alike: normally, or with one of the
        ``agreed`` exceptions (or a set-up error rank 0 shared), which all ranks raise at the
        same step. After any other error the others may never reach a barrier: none then."""
        if not self.distributed:
            yield self
            return
        import torch.distributed as dist
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available() and self.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(self.local_rank)  # NCCL's object collectives use the current GPU
        dist.init_process_group(backend=backend)
        together = False
        try:
            yield self
            together = True
        except (ConfigError, PeerFailed, *agreed):
            together = True
            raise
        finally:
            if together:
                with contextlib.suppress(Exception):
                    dist.barrier()
            dist.destroy_process_group()

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only; every rank gets its result, or raises its error
        (other ranks as :class:`PeerFailed`, which the command line does not print twice)."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except BaseException as e:  # a signal's SystemExit too: the others must not wait on
                dist.broadcast_object_list([("error", f"{e}", _exit_code(e))], src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        if box[0][0] == "error":
            raise PeerFailed(box[0][1], box[0][2])
        return box[0][1]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may fill caches), then the others of the loop."""
        if self.layout.replicas == 1:
            yield
            return
        import torch.distributed as dist
        if not self.is_main:
            dist.barrier(group=self._loop_group())
        yield
        if self.is_main:
            dist.barrier(group=self._loop_group())

    def gather_objects(self, obj) -> list:
        """Every training loop's ``obj`` (a list in replica order) on each of them."""
        if self.layout.replicas == 1:
            return [obj]
        import torch.distributed as dist
        out: list = [None] * self.layout.replicas
        dist.all_gather_object(out, obj, group=self._loop_group())
        return out

    def agree(self, numbers: dict[str, float], flags: dict[str, bool],
              device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
        """One all_reduce per step over the training loops: the mean of every logged number
        over the replicas (the global loss, …) and, per flag, how many loops raised it (a stop,
        rank 0's clock). Later stage groups take part through their replica's group 0."""
        if self.layout.replicas == 1:
            return numbers, {k: int(v) for k, v in flags.items()}
        import torch.distributed as dist
        keys = sorted(numbers)  # every rank logs the same keys (the same schedule decisions)
        vec = torch.tensor([numbers[k] for k in keys] + [float(flags[k]) for k in flags],
                           dtype=torch.float64, device=device)
        dist.all_reduce(vec, group=self._loop_group())
        means = (vec[:len(keys)] / self.layout.replicas).tolist()
        counts = vec[len(keys):].tolist()
        return dict(zip(keys, means)), {k: int(round(c)) for k, c in zip(flags, counts)}


def batchnorm_note(module: torch.nn.Module, world: World) -> str | None:
    """What a data-parallel run does with BatchNorm layers (None: it has none, or one process).
    Each replica normalises with its own shard's statistics (as DDP does without
    SyncBatchNorm, which torch runs on GPUs only); checkpoints hold rank 0's running statistics."""
    if world.layout.replicas == 1:
        return None
    names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not names:
        return None
    return (f"{len(names)} BatchNorm layer(s) ({', '.join(names[:3])}{', …' if len(names) > 3 else ''}) "
            f"normalise each replica's 1/{world.layout.replicas} of the global batch with its own statistics (not the "
            f"global batch's); the checkpoint keeps rank 0's running statistics (docs/distributed.md)")


# ---- biossl train --nproc N ---------------------------------------------------------------
