"""train.stage_chunks (issue 18): a segment learning by autograd over its rows in chunks
gives the unchunked gradients — every local schedule × autograd transport, the objectives
that couple rows (hinge's and NT-Xent's negatives after their heads, CLAPP's and InfoNCE's
futures) and every row layout (pairs, grid, sequence) — and is refused where chunks would
change the result."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from biossl.config import TrainConfig
from biossl.encoders.base import StageStack
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.encoders.gim_audio import GimAudioConfig, gim_audio
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.objectives.infonce import InfoNCEConfig, InfoNCEObjective
from biossl.objectives.ntxent import NTXentConfig, NTXentObjective
from biossl.registry import TRANSPORTS, load_all
from biossl.rules import IncompatibleRule, make_rule
from biossl.rules.rows import row_chunks
from biossl.views.batch import ViewBatch

load_all()

AUTOGRAD = ["bp", "rf", "urf", "sign"]


def pairs_batch(n=6) -> ViewBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 12, 12, generator=g, dtype=torch.float64)
    return ViewBatch(torch.cat([x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64),
                                x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)]), n, "pairs")


def grid_batch(n=2, side=4) -> ViewBatch:
    g = torch.Generator().manual_seed(2)
    return ViewBatch(torch.randn(n * side * side, 1, 8, 8, generator=g, dtype=torch.float64), n, "grid", (side, side))


def sequence_batch(n=3) -> ViewBatch:
    g = torch.Generator().manual_seed(3)
    return ViewBatch(torch.randn(n, 1, 96, generator=g, dtype=torch.float64), n, "sequence")


CASES = {  # objective on its row layout: (encoder, input shape, objective, batch)
    "hinge": (lambda: convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1), (1, 12, 12),
              lambda s: HingeObjective(HingeConfig(dim=8, negatives=3, grad_block=False), s), pairs_batch),
    "hinge-grad-block": (lambda: convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1),
                         (1, 12, 12), lambda s: HingeObjective(HingeConfig(dim=8, negatives=3, grad_block=True), s),
                         pairs_batch),
    "ntxent": (lambda: convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1), (1, 12, 12),
               lambda s: NTXentObjective(NTXentConfig(dim=8), s), pairs_batch),
    "clapp-grid": (lambda: convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1), (1, 8, 8),
                   lambda s: ClappObjective(ClappConfig(steps=2), s), grid_batch),
    "infonce-grid": (lambda: convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1), (1, 8, 8),
                     lambda s: InfoNCEObjective(InfoNCEConfig(steps=2, negatives=3), s), grid_batch),
    "infonce-sequence": (lambda: gim_audio(GimAudioConfig(channels=5, kernels=[4, 4], strides=[2, 2], padding=[1, 1],
                                                          autoregressor=6), 1), (1, 96),
                         lambda s: InfoNCEObjective(InfoNCEConfig(steps=2, negatives=3), s), sequence_batch),
}


def rule_for(case: str, schedule: str, transport: str, chunks: int):
    encoder, in_shape, objective, _ = CASES[case]
    torch.manual_seed(0)
    enc = encoder()
    shapes = enc.out_shapes(in_shape)
    entry = TRANSPORTS.get(transport)
    params = entry.config(diagnostics_every=0) if entry.config is not None else None
    train = TrainConfig(epochs=len(enc), batch_size=6, lr=1e-2, seed=0, stage_chunks=chunks)
    rule = make_rule(schedule, transport, enc, lambda i: objective(shapes[i]), train, transport_params=params)
    return rule.double()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("transport", AUTOGRAD)
@pytest.mark.parametrize("schedule", ["greedy", "random", "simultaneous"])
def test_chunked_rows_give_the_unchunked_gradients(schedule, transport, case):
    whole, chunked = rule_for(case, schedule, transport, 1), rule_for(case, schedule, transport, 3)
    batch = CASES[case][3]()
    for step in range(2):
        for rule in (whole, chunked):
            rule.start_epoch(len(rule.spans) - 1 if schedule == "greedy" and step else 0)
        a, b = whole.step(batch), chunked.step(batch)
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)   # the same stage drawn, the same losses
        grads = 0
        for (name, p), q in zip(whole.named_parameters(), chunked.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
                grads += p.grad.abs().sum().item() > 0
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=name)
        assert grads >= 2   # a stage and its head learned


def test_row_chunks_cover_the_rows_in_order():
    assert row_chunks(0, 10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert row_chunks(6, 12, 4) == [slice(6, 7), slice(7, 9), slice(9, 10), slice(10, 12)]
    assert row_chunks(0, 2, 5) == [slice(0, 1), slice(1, 2)]
    assert row_chunks(4, 4, 3) == []


def test_the_explicit_transport_refuses_chunks_naming_the_fix():
    with pytest.raises(IncompatibleRule, match=r"train.stage_chunks=2 needs a transport whose update can run "
                                               r"in row chunks.*not explicit; use train.stage_chunks=1"):
        rule_for("clapp-grid", "greedy", "explicit", 2)


@pytest.mark.parametrize("order", ["before_targets", "after_targets"])
@pytest.mark.parametrize("target_loss", ["sum", "row_mean", "element_mean"])
@pytest.mark.parametrize("schedule", ["e2e", "greedy", "simultaneous"])
def test_dtp_in_row_chunks_gives_the_unchunked_steps(schedule, target_loss, order):
    """DTP with train.stage_chunks: a forward pass without graphs, then every stage's loss
    against its target chunk by chunk — the same targets, stage gradients, inverses and logs."""
    from biossl.rules.transports.targets import TargetsConfig

    def rule(chunks):
        torch.manual_seed(0)
        enc = convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1)
        shapes = enc.out_shapes((1, 12, 12))
        params = TargetsConfig(target_loss=target_loss, inverse_order=order, diagnostics_every=0)
        train = TrainConfig(epochs=3, batch_size=6, lr=1e-2, seed=0, stage_chunks=chunks)
        return make_rule(schedule, "targets", enc, lambda i: HingeObjective(HingeConfig(dim=8, negatives=3), shapes[i]),
                         train, transport_params=params).double()

    whole, chunked = rule(1), rule(4)
    batch = pairs_batch()
    for _ in range(2):
        for r in (whole, chunked):
            r.start_epoch(0)
        assert whole.step(batch) == pytest.approx(chunked.step(batch), rel=1e-10, abs=1e-12)
        for (name, p), q in zip(whole.named_parameters(), chunked.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=name)
            if p.grad is not None and name.startswith("encoder"):
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_batch_statistics_refuse_chunks_naming_the_fix():
    enc = StageStack([nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))], 1)
    train = TrainConfig(epochs=1, batch_size=6, stage_chunks=2)
    with pytest.raises(IncompatibleRule, match=r"batch statistics \(BatchNorm\).*use train.stage_chunks=1"):
        make_rule("greedy", "bp", enc, lambda i: HingeObjective(HingeConfig(dim=4), (4, 10, 10)), train)
    make_rule("greedy", "bp", enc, lambda i: HingeObjective(HingeConfig(dim=4), (4, 10, 10)),
              TrainConfig(epochs=1, batch_size=6))   # unchunked: fine


def test_a_resume_may_change_stage_chunks_and_records_it(tmp_path, capfd):
    """Nothing saved depends on train.stage_chunks (the same gradients, no state): a resume
    applies a new value and records the change."""
    from biossl.cli import main as cli
    from runproc import TINY, metric_rows
    out = tmp_path / "run"
    digits = ["data.name=digits", "data.download=false", "train.device=cpu", "train.max_steps_per_epoch=2"]
    assert cli(["train", "fmnist-rll-hinge", *TINY, *digits, "train.epochs=1", "--out", str(out)]) == 0
    assert cli(["train", "--resume", str(out), "train.epochs=2", "train.stage_chunks=3"]) == 0
    event = [r for r in metric_rows(out) if r.get("event") == "resume_config_change"]
    assert event and event[0]["changed"]["train.stage_chunks"] == [1, 3]
