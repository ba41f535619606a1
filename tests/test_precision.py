"""Every rule family trains under bf16 autocast (the GPU setting), on the CPU: bf16 is
really used inside the trainer, and the run stays close to the same run in fp32."""
import json
import math
from collections import Counter

import pytest
import torch

from biossl.config import load_config
from biossl.train import train

DIGITS = ["train.device=cpu", "data.name=digits", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
          "train.batch_size=32", "train.epochs=1", "train.max_steps_per_epoch=3",
          "train.threads=1", "train.log_every=1", "data.download=false"]


def run(tmp_path, recipe, extra, precision):
    """Train; returns (summary, logged losses, final rule state, Counter of the output dtypes
    of every layer with a weight, seen by a global forward hook during training)."""
    dtypes = Counter()

    def hook(module, inputs, output):
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter) and torch.is_tensor(output):
            dtypes[output.dtype] += 1
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        out = train(load_config(recipe, DIGITS + extra + [f"train.precision={precision}"]),
                    tmp_path / precision, progress=False)
    finally:
        handle.remove()
    losses = [json.loads(line)["loss"] for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(tmp_path / precision / "checkpoint.pt", weights_only=False)["rule"]
    return out, losses, state, dtypes


@pytest.mark.parametrize("recipe,extra", [
    ("fmnist-bp-hinge", []),
    ("fmnist-bp-hinge", ["transport.name=urf"]),
    ("fmnist-gll-hinge", ["transport.name=rf", "train.epochs=2"]),
    ("fmnist-dtp-hinge", ["transport.inverse_warmup=0"]),
    ("fmnist-clapp", ["views.patch=4", "views.stride=2", "train.batch_size=16"]),
])
def test_bf16_autocast_is_used_and_stays_close_to_fp32(tmp_path, recipe, extra):
    """Tolerances: every logged loss within 1 % of fp32's (measured ≤ 0.5 %); every parameter
    within 2·lr per step of its fp32 value (Adam moves a parameter by about lr per step, so
    this allows bf16 rounding to flip small updates, not to train something else; measured
    ≤ 1.4·lr per step)."""
    out16, losses16, state16, dtypes16 = run(tmp_path, recipe, extra, "bf16")
    out32, losses32, state32, dtypes32 = run(tmp_path, recipe, extra, "fp32")
    assert dtypes16[torch.bfloat16] > 0, dtypes16          # weight layers ran in bf16 …
    assert dtypes32[torch.bfloat16] == 0, dtypes32         # … and only under train.precision=bf16
    steps = out16["steps"]
    assert steps == out32["steps"] >= 3 and len(losses16) == len(losses32) == steps
    assert all(math.isfinite(v) for v in losses16)
    assert losses16 != losses32                            # bf16 changed the numbers …
    for a, b in zip(losses16, losses32):                   # … within its rounding
        assert abs(a - b) <= 0.01 * abs(b), (losses16, losses32)
    lr = load_config(recipe, DIGITS + extra).train.lr
    assert state16.keys() == state32.keys()
    floats = [k for k in state32 if torch.is_tensor(state32[k]) and state32[k].is_floating_point()]
    assert floats
    for k in floats:
        assert state16[k].dtype == state32[k].dtype == torch.float32, k   # parameters stay fp32
        diff = float((state16[k] - state32[k]).abs().max())
        assert diff <= 2 * lr * steps, (k, diff)
