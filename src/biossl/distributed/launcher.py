"""``biossl train --nproc N …``: the torchrun launch of N processes on this node, started and
waited for here (biossl.distributed.launch is what each launched process does)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace

from biossl.distributed.launch import LaunchError, World


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The launch ``biossl train --nproc N`` runs: torchrun, standalone (one node, a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "biossl", "train", *train_args]


def check_launch(nproc: int, stage_groups: int, batch_size: int) -> None:
    """The refusals a launch of ``nproc`` processes would give every rank (stage groups that do
    not divide it, a global batch its replicas cannot share), checked before any process starts:
    ``biossl train --nproc`` then fails with one message and exit 2 instead of a failed launch."""
    world = World(size=nproc)
    if nproc % stage_groups:
        world.arranged(stage_groups)  # raises the launch's own refusal
    replace(world, stage_groups=stage_groups).shard(batch_size)


def run_torchrun(nproc: int, train_args: list[str]) -> int:
    """Run the launch and wait; SIGINT/SIGTERM reach it once (torchrun passes them on to every
    process, which then stop after the same step and save). Returns its exit status."""
    if "WORLD_SIZE" in os.environ:
        raise LaunchError("--nproc starts its own torchrun launch, but this process already runs "
                          "under one (WORLD_SIZE is set); drop --nproc")
    # its own session: a terminal's Ctrl-C reaches only this process, which passes it on once
    proc = subprocess.Popen(torchrun_command(nproc, train_args), start_new_session=True)

    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
        # torchrun exits 1 after passing a signal on; say what stopped the run, as one process does
        return 128 + got[0] if got and code != 0 else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:  # pragma: no cover - we are leaving on an exception
            proc.kill()
