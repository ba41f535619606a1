"""speech-cpc's training step against the machine's fp32 matmul ceiling, before and after the
issue-18 speedups, in one process (the machine is shared: only same-process ratios count).

'before' is the same assembled run with the pre-change code paths put back: torch's
nn.Conv1d on the waveform stage (instead of ThinInputConv1d's batched GEMM) and InfoNCE
scoring its negatives with a bmm of M (J×D)·(D×1) products, its futures cut twice. Cells
are timed in interleaved rounds (median); GFLOP/step is torch's FLOP count (matmuls and
convs, forward and backward) of each cell's own ops, as ``biossl bench`` counts it.

    PYTHONPATH=src python benchmarks/speech_ceiling.py --channels 512 64 --threads 2 --steps 4

Huge pages for large tensors (biossl.hugepages) are on as in ``biossl`` runs; the process
reads the setting once, so their effect is measured across two processes:
``THP_MEM_ALLOC_ENABLE=0`` in front of the command runs without them.
"""
from __future__ import annotations

import argparse
import statistics
import time
import types

from biossl.hugepages import large_tensors_on_huge_pages

large_tensors_on_huge_pages()  # as the command line does (THP_MEM_ALLOC_ENABLE=0: without)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from biossl.bench import BenchCell
from biossl.config import load_config
from biossl.encoders.thin_conv import ThinInputConv1d
from biossl.measure import matmul_gflops
from biossl.objectives.infonce import InfoNCEObjective
from biossl.objectives.predictive import context_future, patch_vectors, steps_for, vector_grid


def _scores_before(pred: Tensor, z: Tensor, neg_idx: Tensor, candidates: Tensor) -> Tensor:
    pos = (z * pred).sum(-1, keepdim=True)
    zn = candidates.index_select(0, neg_idx.flatten()).view(*neg_idx.shape, z.shape[-1])
    neg = torch.bmm(zn, pred.unsqueeze(-1)).squeeze(-1)
    return torch.cat([pos, neg], dim=1)


def _infonce_before(self, h: Tensor, batch) -> Tensor:
    """InfoNCEObjective.forward before the change (bmm scores, futures cut twice)."""
    self._check_batch(batch)
    grid = vector_grid(patch_vectors(h, batch), batch)
    steps = steps_for(batch, grid.shape[1], self.cfg.steps)
    total = grid.new_zeros(())
    grid_all = self.replicas.rows(grid)
    for t, off in steps:
        c, z = context_future(grid, off)
        c, z = c.reshape(-1, c.shape[-1]), z.reshape(-1, z.shape[-1])
        z_all = context_future(grid_all, off)[1].reshape(-1, z.shape[-1])
        m = z_all.shape[0]
        shift = torch.randint(1, m, (m, self.cfg.negatives), generator=self.generator)
        neg_idx = ((torch.arange(m)[:, None] + shift) % m)[self.replicas.own(z.shape[0])].to(z.device)
        logits = _scores_before(c @ self.w_pred[t].t(), z, neg_idx, z_all)
        target = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        total = total + F.cross_entropy(logits, target)
    return total / len(steps)


def before(cell: BenchCell) -> BenchCell:
    for m in cell.asm.rule.modules():
        if isinstance(m, ThinInputConv1d):
            m.__class__ = nn.Conv1d  # same parameters and state: torch's conv
        if isinstance(m, InfoNCEObjective):
            m.forward = types.MethodType(_infonce_before, m)
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[512, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per cell (one per round)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cells = []
    for ch in args.channels:
        cfg = load_config("speech-cpc", [f"encoder.channels={ch}"])
        cells += [before(BenchCell(f"channels={ch} before", cfg)), BenchCell(f"channels={ch} after", cfg)]
    for c in cells:
        c.steps(1)  # warm-up
    # wall clock, and this process's CPU time: on a shared machine a neighbour stretches the
    # wall clock but (one thread) hardly the CPU time, so the CPU-time ratio is the steadier one
    ceilings, cpu_ceilings = [], []
    cpu_times = {c.label: [] for c in cells}
    for _ in range(args.steps):  # interleaved rounds: a noisy neighbour hurts every cell alike
        ceilings.append(matmul_gflops("cpu"))
        cpu_ceilings.append(matmul_gflops("cpu", clock=time.process_time))
        for c in cells:
            t0 = time.process_time()
            c.step_times.append(c.steps(1))
            cpu_times[c.label].append(time.process_time() - t0)
    ceiling, cpu_ceiling = statistics.median(ceilings), statistics.median(cpu_ceilings)
    print(f"threads {args.threads}, fp32 matmul ceiling {ceiling:.0f} GFLOP/s wall, {cpu_ceiling:.0f} per "
          f"CPU-second (medians of {args.steps})")
    print("| cell | step ms | GFLOP/step | GFLOP/s | % of ceiling | CPU ms | % of ceiling, CPU time |\n"
          "|---|---|---|---|---|---|---|")
    for c in cells:
        st, ct = statistics.median(c.step_times), statistics.median(cpu_times[c.label])
        fl = c.flops() / 1e9
        print(f"| {c.label} | {st * 1e3:.0f} | {fl:.3g} | {fl / st:.0f} | {100 * fl / st / ceiling:.0f} % | "
              f"{ct * 1e3:.0f} | {100 * fl / ct / cpu_ceiling:.0f} % |")


if __name__ == "__main__":
    main()
