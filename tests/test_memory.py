"""What a step keeps alive (issue 18): the memory properties of the encoders' layers and of
the rules' steps that a change could break. Counted with autograd's saved-tensor hooks, not
timed or measured by the process's memory."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biossl.assemble import assemble
from biossl.config import load_config
from biossl.encoders.layers import InPlaceHardtanh, MaxPool2d, MaxPool3d, conv_stage

TINY = ["data.name=digits", "encoder.channels=[4,8,8]", "encoder.pool=[true,true,false]",
        "train.batch_size=16", "train.threads=1", "train.device=cpu"]


class Saved:
    """The tensors autograd saves for backward while the context is open (by storage)."""

    def __init__(self):
        self.storages: dict[int, tuple[int, tuple, torch.dtype]] = {}
        self.maps: list[tuple[tuple, torch.dtype]] = []
        """Every saved tensor of ≥ 3 dims (the maps), in order."""
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def pack(self, t):
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = (st.nbytes(), tuple(t.shape), t.dtype)
        if t.dim() >= 3:
            self.maps.append((tuple(t.shape), t.dtype))
        return t

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    def holds(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self.storages


def test_a_conv_stage_keeps_its_input_the_activation_and_pool_indices_only():
    """conv → hardtanh → max-pool: the graph holds the stage input, one map (the in-place
    activation's output) and the pool's indices; not the conv output twice, nor the pool's
    input (torch's own hardtanh_ and max-pool keep those)."""
    torch.manual_seed(0)
    stage = conv_stage(3, 8, act="hardtanh", pool=True)
    x = torch.randn(4, 3, 10, 10)
    with Saved() as saved:
        y = stage(x)
    maps = [(shape, dtype) for _, shape, dtype in saved.storages.values() if len(shape) == 4]
    assert sorted(maps, key=str) == sorted([((4, 3, 10, 10), torch.float32), ((8, 3, 3, 3), torch.float32),
                                            ((4, 8, 10, 10), torch.float32), ((4, 8, 5, 5), torch.int64)], key=str)
    assert y.shape == (4, 8, 5, 5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_lean_layers_give_torchs_values_and_gradients(channels_last):
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = F.max_pool2d(F.hardtanh(a * 1.0), 2)
    out = MaxPool2d(2)(InPlaceHardtanh()(b * 1.0))
    ref.backward(g)
    out.backward(g)
    assert torch.equal(ref, out) and torch.equal(a.grad, b.grad)
    # 3-D with overlapping windows (the video encoder's pool): a unit may win twice
    v = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    w = v.detach().clone().requires_grad_()
    g3 = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    F.max_pool3d(v, (1, 3, 3), (1, 2, 2), (0, 1, 1)).backward(g3)
    MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))(w).backward(g3)
    assert torch.allclose(v.grad, w.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 9, 8), (2, 5, 16, 16)])
@pytest.mark.parametrize("kernel", [2, 3])
def test_a_pool_without_graph_gives_torchs_values(shape, kernel):
    """The lean pool without a graph (the window max of strided slices on NCHW maps) equals
    torch's max-pool, NaN and odd sizes included; other layouts use torch's own."""
    x = torch.randn(shape, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    pool = MaxPool2d(kernel)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            got, want = pool(inp), F.max_pool2d(inp, kernel)
            assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert pool(x).is_contiguous()


@pytest.mark.parametrize("schedule", ["greedy", "random"])
def test_a_layerwise_step_keeps_no_lower_stage_graph(schedule):
    """A layer-wise step saves for backward exactly what the trained stage and its head save
    on their own, given the stage's input: no weight and no map of the frozen stages."""
    from biossl.rules.transports.base import run_segment
    asm = assemble(load_config("fmnist-gll-hinge", TINY + [f"schedule.name={schedule}", "train.epochs=3",
                                                         "transport.name=urf", "transport.diagnostics_every=0"]))
    rule = asm.rule
    rule.start_epoch(2)  # greedy: the top stage
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    trained = set()
    for _ in range(6):  # random: several draws of the trained stage
        batch = asm.recipe(x, torch.Generator().manual_seed(0))
        with Saved() as step:
            k = int(rule.step(batch)["stage"])
        trained.add(k)
        for i, stage in enumerate(rule.encoder.stages):  # W, or B under random feedback
            held = any(step.holds(t) for t in [*stage.parameters(), *stage.buffers()])
            assert held == (i == k), (k, i)
        with Saved() as alone:
            rule.objectives[k](run_segment(rule, k, rule.frozen_input(k, batch), batch), batch)
        assert step.maps == alone.maps
    assert trained == {2} if schedule == "greedy" else len(trained) > 1


def test_dtp_targets_carry_no_graph_and_each_stage_graph_stays_in_its_stage():
    asm = assemble(load_config("fmnist-dtp-hinge", TINY + ["transport.inverse_warmup=0",
                                                           "transport.diagnostics_every=0"]))
    rule, t = asm.rule, asm.rule.transport
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    batch = asm.recipe(x, torch.Generator().manual_seed(0))
    p = t.forward_pass(rule, 0, batch.x, batch)
    _, top = t.top_target(rule, 0, p, batch)
    targets = t.propagate_targets(0, p.hs, top)
    assert all(not tg.requires_grad and tg.grad_fn is None for tg in [top, *targets])

    def leaves(fn, seen=None) -> set[int]:
        seen = set() if seen is None else seen
        if fn is None or fn in seen:
            return set()
        seen.add(fn)
        found = {id(fn.variable)} if hasattr(fn, "variable") else set()
        for nxt, _ in fn.next_functions:
            found |= leaves(nxt, seen)
        return found

    for i, out in enumerate(p.outs):
        assert leaves(out.grad_fn) == {id(q) for q in rule.encoder.stages[i].parameters()}, i


def test_a_dtp_step_equals_its_pieces_in_the_official_order():
    """The step frees its stage graphs before the inverses learn (official order): the
    forward weights' gradients are still those of the targets from the previous inverses."""
    over = TINY + ["transport.inverse_warmup=0", "transport.diagnostics_every=0",
                   "transport.inverse_order=after_targets"]
    a, b = assemble(load_config("fmnist-dtp-hinge", over)), assemble(load_config("fmnist-dtp-hinge", over))
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    batch = a.recipe(x, torch.Generator().manual_seed(0))
    ta, tb = a.rule.transport, b.rule.transport
    ta.gradients(a.rule, 0, batch.x, batch)
    # the same by hand: targets with the untrained inverses, then the stage losses
    p = tb.forward_pass(b.rule, 0, batch.x, batch)
    _, top = tb.top_target(b.rule, 0, p, batch)
    sum(tb.stage_losses(p.outs, tb.propagate_targets(0, p.hs, top))).backward()
    for qa, qb in zip(a.rule.encoder.parameters(), b.rule.encoder.parameters()):
        assert torch.allclose(qa.grad, qb.grad, rtol=1e-5, atol=1e-7)


class LiveStageGraph:
    """The bytes of the maps a stage's and its head's graph keep alive, at their peak:
    tensors saved for backward while an encoder stage or an objective's head runs, counted
    until autograd frees them — not the parameters, nor the stage's input (alive anyway; a
    chunk's rows are a view of it)."""

    def __init__(self, rule):
        self.outside = {t.untyped_storage().data_ptr() for t in [*rule.parameters(), *rule.buffers()]}
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0
        self.inside = False
        self.handles = [h for s in rule.encoder.stages for h in (
            s.register_forward_pre_hook(self.enter),
            s.register_forward_hook(lambda *a: setattr(self, "inside", False)))]
        self.handles += [h for o in rule.objectives for h in (
            o.head.register_forward_pre_hook(lambda *a: setattr(self, "inside", True)),
            o.head.register_forward_hook(lambda *a: setattr(self, "inside", False)))]
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: held.t)

    def enter(self, stage, inputs):
        self.inside = True
        self.outside.add(inputs[0].untyped_storage().data_ptr())

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if not self.inside or ptr in self.outside:
            return _Held(t, None)
        if ptr not in self.live:
            self.live[ptr] = [0, t.untyped_storage().nbytes()]
            self.now += self.live[ptr][1]
            self.peak = max(self.peak, self.now)
        self.live[ptr][0] += 1
        return _Held(t, (self, ptr))

    def release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[0] -= 1
        if not entry[0]:
            self.now -= entry[1]
            del self.live[ptr]

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for h in self.handles:
            h.remove()


class _Held:
    def __init__(self, t, owner):
        self.t, self.owner = t, owner

    def __del__(self):
        if self.owner is not None:
            self.owner[0].release(self.owner[1])


@pytest.mark.parametrize("schedule,stage", [("greedy", 0), ("greedy", 1), ("simultaneous", None)])
@pytest.mark.parametrize("grad_block", [True, False])
def test_stage_chunks_divide_the_trained_stages_live_graph(schedule, stage, grad_block):
    """With train.stage_chunks=C the maps a trained stage's and its head's graph hold at once are 1/C of the
    unchunked step's or less (rows divide evenly here), whatever the stage and the objective's
    gradient block."""
    def peak(chunks: int) -> int:
        asm = assemble(load_config("fmnist-gll-hinge", TINY + [
            f"schedule.name={schedule}", "train.epochs=3", "transport.name=urf", "transport.diagnostics_every=0",
            f"train.stage_chunks={chunks}", f"objective.grad_block={str(grad_block).lower()}",
            "objective.head_pool=null", "encoder.pool=[false,true,false]"]))  # a flatten head on an unpooled
        # map (conv6 stage 1): the head keeps a map as large as the stage's
        rule = asm.rule
        rule.start_epoch(stage or 0)
        batch = asm.recipe(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))
        with LiveStageGraph(rule) as graph:
            rule.step(batch)
        assert graph.now == 0 and graph.peak > 0   # every saved map freed by the step's end
        return graph.peak

    whole = peak(1)
    assert 0 < peak(4) * 4 <= whole  # less with a gradient block: its first view gets no chunk


def test_dtp_in_row_chunks_keeps_one_chunk_of_one_stage_graph():
    """DTP with train.stage_chunks=C: the forward pass keeps no graph and each stage learns
    chunk by chunk, so the stage maps alive at once are at most 1/C of the unchunked step's
    (which holds every stage's graph while the top stage learns)."""
    def peak(chunks: int) -> int:
        asm = assemble(load_config("fmnist-dtp-hinge", TINY + [
            "transport.inverse_warmup=0", "transport.diagnostics_every=0", f"train.stage_chunks={chunks}",
            "encoder.pool=[false,true,false]"]))
        batch = asm.recipe(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))
        with LiveStageGraph(asm.rule) as graph:
            asm.rule.step(batch)
        assert graph.now == 0 and graph.peak > 0
        return graph.peak

    assert 0 < peak(4) * 4 <= peak(1)
