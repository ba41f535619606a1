"""Every rule family runs a few steps under bf16 autocast (the GPU setting), on the CPU."""
import math

import pytest

from biossl.config import load_config
from biossl.train import train

DIGITS = ["data.name=digits", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
          "train.batch_size=32", "train.epochs=1", "train.max_steps_per_epoch=3",
          "train.threads=1", "train.precision=bf16"]


@pytest.mark.parametrize("recipe,extra", [
    ("fmnist-bp-hinge", []),
    ("fmnist-bp-hinge", ["rule.name=urf"]),
    ("fmnist-gll-hinge", ["rule.feedback=rf"]),
    ("fmnist-dtp-hinge", ["rule.feedback_warmup=0"]),
    ("fmnist-clapp", ["views.patch=4", "views.stride=2", "train.batch_size=16"]),
])
def test_bf16_autocast_runs(tmp_path, recipe, extra):
    out = train(load_config(recipe, DIGITS + extra), tmp_path / "r", progress=False)
    assert out["steps"] >= 3 and math.isfinite(out["final_loss"])
