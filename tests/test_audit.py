"""`biossl audit`: conditions (i)–(iv) observed in one instrumented step, for the rules whose
verdicts the papers state, and for rules broken on purpose in this file (a stage whose input
keeps its graph, a feedback layer that uses W, a loss that reads the labels)."""
import json

import torch

from biossl.audit import audit_config
from biossl.audit.report import format_report
from biossl.config import load_config
from biossl.feedback import FeedbackConv, FeedbackLayer, FeedbackLinear
from biossl.rules.schedules import Simultaneous

BATCH = 8


def audit(config, *overrides, prepare=None, batch=BATCH):
    return audit_config(load_config(config, list(overrides)), batch=batch, prepare=prepare)


def verdict(report):
    return report.verdict()


def group(report, name):
    return next(g for g in report.groups if g.group == name)


def evidence(report, name, cond):
    return " ".join(group(report, name).conditions[cond].evidence)


def test_e2e_bp_ntxent_fails_locality_error_and_transport():
    r = audit("fmnist-bp-ntxent")
    assert verdict(r) == {"i": False, "ii": False, "iii": False, "iv": True}
    # stage 0's update read the activity of the stages above it and went through their Wᵀ
    assert "stage1 activity" in evidence(r, "stage0", "i") and "stage2 activity" in evidence(r, "stage0", "i")
    assert "stage1.0.weight used by input gradient of a convolution" in evidence(r, "stage0", "iii")
    assert "softmax" in evidence(r, "stage2", "ii") and "division" in evidence(r, "stage2", "ii")
    # the top stage's update is local; its head's update transports no other weight
    assert group(r, "stage2").conditions["i"].holds and group(r, "head").conditions["iii"].holds


def test_e2e_urf_hinge_fails_locality_only():
    r = audit("fmnist-bp-hinge", "transport.name=urf")
    assert verdict(r) == {"i": False, "ii": True, "iii": True, "iv": True}
    assert "stage1 activity" in evidence(r, "stage0", "i")


def test_greedy_urf_hinge_passes_all_and_audits_every_stage():
    r = audit("fmnist-gll-hinge", "transport.name=urf")
    assert verdict(r) == {"i": True, "ii": True, "iii": True, "iv": True}
    assert r.epochs == [0, 1, 2]   # one step at each stage's turn
    assert all(g.updated for g in r.groups)


def test_greedy_bp_transports_only_the_heads_weights():
    r = audit("fmnist-gll-hinge", "transport.name=bp")
    assert verdict(r) == {"i": True, "ii": True, "iii": False, "iv": True}
    for i in range(3):
        assert evidence(r, f"stage{i}", "iii") == f"head{i}.head.mlp.0.weight used by mm with Wᵀ"


def test_clapp_asymmetric_passes_all_and_clapp_s_transports_w_pred():
    assert verdict(audit("fmnist-clapp")) == {"i": True, "ii": True, "iii": True, "iv": True}
    s = audit("fmnist-clapp-s")
    assert verdict(s) == {"i": True, "ii": True, "iii": False, "iv": True}
    assert "head1.w_pred used by mm with Wᵀ" in evidence(s, "stage1", "iii")


def test_explicit_rule_is_audited_from_its_grad_writes():
    """No autograd at all: the audit follows the ops whose results became .grad."""
    r = audit("fmnist-clapp", "transport.name=explicit")
    assert r.backward_calls == 0
    assert verdict(r) == {"i": True, "ii": True, "iii": True, "iv": True}
    s = audit("fmnist-clapp-s", "transport.name=explicit")   # W_predᵀ z, written by hand
    assert not verdict(s)["iii"] and "head0.w_pred used by mm with Wᵀ" in evidence(s, "stage0", "iii")
    # the official asymmetric form computes its mirror score u′ = cᵀ W_retro z as (c W_retro)·z:
    # a score the loss is computed from, not an error sent through W_retroᵀ (as its autograd form)
    for transport in ("explicit", "bp"):
        mirror = audit("fmnist-clapp", f"transport.name={transport}", "objective.retro_score=separate")
        assert verdict(mirror) == {"i": True, "ii": True, "iii": True, "iv": True}


def test_dtp_is_local_and_its_transport_is_the_heads():
    r = audit("fmnist-dtp-hinge")
    v = verdict(r)
    assert v["i"] and v["ii"] and v["iv"]
    # (iii) as the top head dictates: every stage's target comes through the head's Wᵀ, and
    # nothing else: no encoder weight is used transposed
    assert not v["iii"]
    for i in range(3):
        assert evidence(r, f"stage{i}", "iii").startswith("head.head.mlp.0.weight used by")
    # the lower stages read a target the inverses computed, not the stages above
    assert "transport" in " ".join(group(r, "stage0").reads)
    assert not group(r, "transport").network   # the inverses' own learning is reported apart


def test_gim_fails_the_error_condition():
    r = audit("fmnist-gim")
    assert not verdict(r)["ii"] and verdict(r)["i"]
    assert "_log_softmax_backward_data (softmax)" in evidence(r, "stage0", "ii")


def test_batchnorm_in_a_video_encoder_is_flagged():
    r = audit("video-clapp", "encoder.batch_norm=true", "encoder.width=0.1", batch=4)
    assert r.batch_stat_stages == [f"stage{i}" for i in range(5)]
    assert {b.module for b in r.batch_stats} == {"BatchNorm3d"}
    assert "native_batch_norm_backward (normalisation)" in evidence(r, "stage0", "ii")
    assert "+BN" in format_report(r) or "⚑" in format_report(r)
    plain = audit("video-clapp", "encoder.width=0.1", batch=4)
    assert plain.batch_stats == [] and verdict(plain) == {"i": True, "ii": True, "iii": True, "iv": True}


# ---- rules broken on purpose -----------------------------------------------------------
class ChainedSimultaneous(Simultaneous):
    """Every stage's loss on the stage below's output *with its graph* (the input is not
    detached), summed, one backward, then every optimizer steps: each stage's loss now also
    trains the stages below it."""

    def step(self, rule, batch):
        for o in rule.optimizers:
            o.zero_grad(set_to_none=True)
        x, total = batch.x, 0
        for k, span in enumerate(rule.spans):
            x = rule.encoder.run(x, span.start, span.stop)
            total = total + rule.objectives[k](x, batch)
        total.backward()
        for o in rule.optimizers:
            o.step()
        return {"loss": float(total.detach())}


def test_a_stage_input_that_keeps_its_graph_is_caught():
    def chain(rule, labels):
        rule.schedule = ChainedSimultaneous()
    r = audit("fmnist-clapp", prepare=chain)
    assert not verdict(r)["i"]
    assert "stage1 activity" in evidence(r, "stage0", "i") and "stage2 activity" in evidence(r, "stage1", "i")
    assert group(r, "stage2").conditions["i"].holds   # the top stage has nothing above it


class SneakyLinear(FeedbackLinear):
    def backward_weight(self):
        return self.weight.detach()      # "feedback" that is W itself (shares its storage)


class SneakyConv(FeedbackConv):
    def backward_weight(self):
        return self.weight.detach()


class CopyingConv(FeedbackConv):
    def backward_weight(self):
        return self.weight.detach().clone()   # a fresh copy of W: other storage, same values


def swap_feedback(conv_cls, linear_cls=SneakyLinear):
    def prepare(rule, labels):
        for m in rule.modules():
            if isinstance(m, FeedbackLayer):
                m.__class__ = conv_cls if isinstance(m, FeedbackConv) else linear_cls
    return prepare


def test_a_feedback_layer_that_uses_w_is_caught():
    clean = audit("fmnist-bp-hinge", "transport.name=urf")
    assert verdict(clean)["iii"]
    r = audit("fmnist-bp-hinge", "transport.name=urf", prepare=swap_feedback(SneakyConv))
    assert not verdict(r)["iii"]
    assert "stage1.0.weight used by input gradient of a convolution" in evidence(r, "stage0", "iii")
    assert "head.head.mlp.0.weight used by mm with Wᵀ" in evidence(r, "stage2", "iii")
    copied = audit("fmnist-bp-hinge", "transport.name=urf", prepare=swap_feedback(CopyingConv))
    assert "stage2.0.weight used by input gradient of a convolution" in evidence(copied, "stage1", "iii")


class ClosureFn(torch.autograd.Function):
    """A linear map whose backward reads W from the module, not from what it saved."""

    @staticmethod
    def forward(ctx, x, weight, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return g @ ctx.layer.weight, g.t() @ x, None


class ClosureLinear(FeedbackLinear):
    def forward(self, x):
        return ClosureFn.apply(x, self.weight, self)


def test_a_backward_that_reads_w_without_saving_it_is_caught():
    """What autograd saved does not show it (only x is saved): the ops the backward ran do."""
    r = audit("fmnist-bp-hinge", "transport.name=urf", prepare=swap_feedback(FeedbackConv, ClosureLinear))
    assert not verdict(r)["iii"] and verdict(r)["ii"]
    assert evidence(r, "stage2", "iii") == "head.head.mlp.0.weight used by mm with Wᵀ"
    assert group(r, "head").conditions["iii"].holds   # W's own gradient g x does not use W


def test_a_feedback_buffer_that_is_w_is_caught():
    def alias(rule, labels):
        for m in rule.modules():
            if isinstance(m, FeedbackLayer):
                m.feedback = m.weight.detach()     # the buffer B now *is* W's storage
    r = audit("fmnist-bp-hinge", "transport.name=rf", prepare=alias)
    assert not verdict(r)["iii"]
    assert "buffer encoder.stages.1.0.feedback is the storage of stage1.0.weight" in r.conditions["iii"].evidence
    assert "stage1.0.weight used by input gradient of a convolution" in evidence(r, "stage0", "iii")


def test_a_loss_that_reads_the_labels_is_caught():
    def peek(rule, labels):
        obj = rule.objectives[0]
        honest = obj.forward

        def forward(h, batch):
            return honest(h, batch) + 0.0 * labels.float().mean()
        obj.forward = forward
    r = audit("fmnist-bp-hinge", prepare=peek)
    assert not verdict(r)["iv"] and r.label_reads > 0
    assert "computed from the labels" in " ".join(r.conditions["iv"].evidence)
    assert not any(e.startswith("holds") for e in r.conditions["iv"].evidence)  # no contradiction
    assert verdict(audit("fmnist-bp-hinge"))["iv"]


# ---- output ------------------------------------------------------------------------------
def test_cli_writes_the_table_and_json(tmp_path, capsys):
    from biossl.cli import main
    out = tmp_path / "a.json"
    assert main(["audit", "fmnist-gll-hinge", "transport.name=urf", "--batch", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| (iii) no weight transport" in text and "| stage2 | yes | ✓ | ✓ | ✓ | ✓ |" in text
    data = json.loads(out.read_text())
    assert data["verdict"] == {"i": True, "ii": True, "iii": True, "iv": True}
    assert {g["group"] for g in data["groups"]} == {"stage0", "stage1", "stage2", "head0", "head1", "head2"}


def test_audit_leaves_autograd_as_it_found_it():
    backward, grad = torch.autograd.backward, torch.autograd.grad
    audit("fmnist-gll-hinge")
    assert torch.autograd.backward is backward and torch.autograd.grad is grad
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_compare_takes_its_condition_column_from_the_audit(tmp_path):
    from biossl.compare import audit_cell
    cfg = load_config("fmnist-gim", [])
    assert audit_cell(cfg, tmp_path) == {"i": True, "ii": False, "iii": False, "iv": True}
    stored = json.loads((tmp_path / "audit.json").read_text())
    assert stored["verdict"]["iii"] is False and stored["groups"][0]["group"] == "stage0"


def test_suite_audit_shows_where_the_declarations_disagree(tmp_path):
    from biossl.audit.suite import audit_suite
    suite = tmp_path / "two.yaml"
    suite.write_text("name: two\ncells:\n  - {label: gim, config: fmnist-gim}\n"
                     "  - {label: clapp, config: fmnist-clapp}\n"
                     "  - {label: bn, config: video-clapp, overrides: [encoder.batch_norm=true]}\n")
    md = audit_suite(str(suite), batch=BATCH)
    row = {label: next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
           for label in ("gim", "clapp", "bn")}
    assert "| ✓✗✗✓ | ✓✗✗✓ | — |" in row["gim"]      # InfoNCE's W_kᵀ z, now declared too
    assert "| ✓✓✓✓ | ✓✓✓✓ | — |" in row["clapp"]
    # no part declares its encoder's batch statistics: only the audit sees BatchNorm's error
    assert "✓✗✓✓ +BN | ✓✓✓✓ | (ii) declared ✓ |" in row["bn"]
    assert md.count("<details>") == 3
