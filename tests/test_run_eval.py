"""`biossl eval` builds only the encoder and the view recipe: the encoder gets the checkpoint's
forward weights (feedback layers' B skipped) and probes exactly like the rule's own encoder;
a checkpoint that does not fit is an error naming the run directory and the key."""
import pytest
import torch

from biossl.assemble import assemble, build_encoder
from biossl.checkpoint import load
from biossl.config import ConfigError, load_config
from biossl.data import load_dataset
from biossl.evaluate import evaluate_encoder, extract_features
from biossl.assemble import build_inputs
from biossl.run_eval import evaluate_run, trained_encoder
from biossl.rundir import CHECKPOINT, load_run_config, save_run_config
from biossl.train import train

TWO_STEPS = ["data.name=digits", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
             "train.batch_size=64", "train.epochs=1", "train.max_steps_per_epoch=2", "train.threads=1",
             "train.device=cpu", "eval.probe_epochs=2", "eval.few_labels=5", "eval.max_train=400",
             "eval.max_test=200", "eval.random_init=false"]


def _trained(run, *overrides):
    cfg = load_config("fmnist-bp-hinge", TWO_STEPS + list(overrides))
    train(cfg, run, progress=False)
    return cfg


def _rule_encoder(run):
    """The encoder as training left it: the whole rule, restored from the checkpoint."""
    asm = assemble(load_run_config(run))
    asm.rule.load_state_dict(load(run / CHECKPOINT)["rule"])
    return asm


@pytest.mark.parametrize("overrides", [["transport.name=urf"], ["schedule.name=greedy", "transport.name=rf", "train.epochs=2"]],
                         ids=["e2e-urf", "gll-rf"])
def test_feedback_run_probes_as_the_rule_encoder(tmp_path, overrides):
    run = tmp_path / "run"
    cfg = _trained(run, *overrides)
    state = load(run / CHECKPOINT)
    assert any(k.endswith(".feedback") for k in state["rule"])       # B is in the checkpoint
    spec, recipe, device = build_inputs(cfg)
    enc, _ = trained_encoder(run, cfg, recipe, spec, device)
    assert not any(k.endswith("feedback") for k in enc.state_dict())  # a plain encoder
    asm = _rule_encoder(run)
    x = load_dataset("digits", spec.test_split).images[:50]
    mine = extract_features(enc, x, recipe, progress=False)
    theirs = extract_features(asm.rule.encoder, x, asm.recipe, progress=False)
    assert len(mine) == len(theirs) == 2
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)
    fresh = extract_features(build_encoder(cfg, recipe, spec, device), x, recipe, progress=False)
    assert not torch.equal(fresh[-1], mine[-1])                          # training moved the weights

    rows = evaluate_run(run, progress=False)
    data = [load_dataset("digits", s) for s in (spec.probe_train_split, spec.test_split)]
    ref = evaluate_encoder(asm.rule.encoder, rows[0].encoder_label, data[0].images, data[0].labels,
                           data[1].images, data[1].labels, asm.recipe, cfg.eval, spec.num_classes,
                           asm.device, seed=cfg.train.seed, progress=False)
    assert rows == ref


def test_checkpoint_that_does_not_fit_names_the_run_and_key(tmp_path):
    run = tmp_path / "run"
    cfg = _trained(run, "transport.name=urf")
    ckpt = run / CHECKPOINT
    good = load(ckpt)

    bad = {**good, "rule": {("encoder.stages.0.0.kernel" if k == "encoder.stages.0.0.weight" else k): v
                            for k, v in good["rule"].items()}}
    torch.save(bad, ckpt)
    with pytest.raises(ConfigError) as e:
        evaluate_run(run, progress=False)
    msg = str(e.value)
    assert str(run) in msg and "missing stages.0.0.weight" in msg and "unexpected stages.0.0.kernel" in msg
    assert "edited" in msg

    torch.save(good, ckpt)
    save_run_config(load_config("fmnist-bp-hinge", TWO_STEPS + ["transport.name=urf", "encoder.channels=[6,8]"]), run)
    with pytest.raises(ConfigError) as e:
        evaluate_run(run, progress=False)
    msg = str(e.value)
    assert str(run) in msg and "stages.0.0.weight has shape (4, 1, 3, 3) in the checkpoint" in msg
    assert "encoder.channels: [4, 8] → [6, 8]" in msg and "put those values back" in msg
    save_run_config(cfg, run)
    assert len(evaluate_run(run, progress=False)) == 2
