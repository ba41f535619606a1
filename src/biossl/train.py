"""The training loop: seeded data order and views, progress, metrics, atomic checkpoints,
resume (also mid-epoch and, for GLL, mid-stack) and clean stops on SIGINT/SIGTERM.

Run directory layout::

    RUN_DIR/config.yaml      resolved config (every default written out)
    RUN_DIR/metrics.jsonl    one JSON object per logged step
    RUN_DIR/tb/              TensorBoard event files (when tensorboard is installed)
    RUN_DIR/checkpoint.pt    latest complete training state (atomic)
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from biossl.assemble import Assembly, assemble
from biossl.checkpoint import load, save_atomic, write_text_atomic
from biossl.config import ConfigError, RunConfig, build_config
from biossl.data import load_dataset
from biossl.rules.base import NonFiniteLoss


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM stop, once the checkpoint is written."""


class TrainingDiverged(RuntimeError):
    """Raised when a loss becomes NaN/inf; the last good checkpoint is kept."""


CHECKPOINT = "checkpoint.pt"
RUN_CONFIG = "config.yaml"
DATA_SOURCE = "data_source.txt"


def run_config_text(cfg: RunConfig) -> str:
    """The resolved config as a run directory stores it (every default written out)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_run_config(cfg: RunConfig, run_dir: str | Path) -> None:
    write_text_atomic(run_config_text(cfg), Path(run_dir) / RUN_CONFIG)


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); "
                          f"create one with: biossl train CONFIG --out {run_dir}")
    return build_config(yaml.safe_load(path.read_text()))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def autocast_for(cfg: RunConfig, device: torch.device):
    """bf16 autocast when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _trim_metrics(path: Path, upto_step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln).get("step", 0) <= upto_step]
    write_text_atomic("".join(ln + "\n" for ln in keep), path)


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
          stop_after_steps: int | None = None) -> dict:
    """Train ``cfg`` into ``run_dir``; returns a summary dict.

    ``stop_after_steps`` simulates an interruption after that many global steps (tests).
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}; start it without --resume")
        cfg = load_run_config(run_dir)
    elif ckpt_path.is_file():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume "
                              f"or choose another --out directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, run_dir)

    asm: Assembly = assemble(cfg)
    rule, recipe, device = asm.rule, asm.recipe, asm.device
    data = load_dataset(cfg.data.name, asm.spec.ssl_split, root=cfg.data.root, download=cfg.data.download)
    write_text_atomic(f"{data.source}\n", run_dir / DATA_SOURCE)  # the copy of the dataset read
    images = data.images if cfg.data.train_subset is None else data.images[: cfg.data.train_subset]
    if device.type == "cuda":
        images = images.to(device)  # uint8 fits; views are made on the device
    n = images.shape[0]
    bs = cfg.train.batch_size
    if n < bs:
        raise ConfigError(f"train.batch_size={bs} exceeds the {n} training images; lower it")
    steps_per_epoch = n // bs  # full batches only: every step sees the same batch size
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    view_gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 31 + 1)

    epoch, step_in_epoch, global_step, elapsed = 0, 0, 0, 0.0
    if resume:
        state = load(ckpt_path, map_location="cpu")  # generator states must stay on the CPU
        rule.load_state_dict(state["rule"])
        view_gen.set_state(state["view_generator"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        elapsed = state.get("elapsed", 0.0)
        if state.get("done"):
            return {"run_dir": str(run_dir), "steps": global_step, "done": True, "resumed": True}
        _trim_metrics(run_dir / "metrics.jsonl", global_step)

    def checkpoint(done: bool = False) -> None:
        save_atomic({"rule": rule.state_dict(), "view_generator": view_gen.get_state(),
                     "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                     "elapsed": elapsed, "done": done, "config": cfg.to_dict()}, ckpt_path)

    total_epochs = rule.num_epochs()
    writer = _tensorboard(run_dir)
    metrics_file = open(run_dir / "metrics.jsonl", "a")
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total_epochs * steps_per_epoch, initial=epoch * steps_per_epoch + step_in_epoch,
               disable=not show, desc=cfg.name, unit="step", dynamic_ncols=True)
    last_loss = float("nan")
    try:
        with _StopFlag() as stop:
            while epoch < total_epochs:
                rule.start_epoch(epoch)
                order = epoch_order(n, cfg.train.seed, epoch)
                rule.train()
                t_epoch = time.perf_counter()
                while step_in_epoch < steps_per_epoch:
                    t0 = time.perf_counter()
                    idx = order[step_in_epoch * bs:(step_in_epoch + 1) * bs]
                    x = images[idx.to(images.device)].to(device, non_blocking=True)
                    batch = recipe(x, view_gen)
                    if cfg.train.channels_last and batch.x.dim() == 4 and device.type == "cuda":
                        batch.x = batch.x.contiguous(memory_format=torch.channels_last)
                    try:
                        with autocast_for(cfg, device):
                            out = rule.step(batch)
                        if not math.isfinite(out["loss"]):
                            raise NonFiniteLoss(f"loss is {out['loss']}")
                    except NonFiniteLoss as e:
                        raise TrainingDiverged(
                            f"training diverged at epoch {epoch}, step {step_in_epoch} ({e}; rule "
                            f"{cfg.rule.name}, objective {cfg.objective.name}, lr {cfg.train.lr}). "
                            f"The last good checkpoint is kept in {ckpt_path if ckpt_path.exists() else run_dir}. "
                            f"Fix: lower the learning rate (e.g. train.lr={cfg.train.lr / 3:.2g}) or change the "
                            f"objective's scale, then start a new run (or --resume from the checkpoint)."
                        ) from None
                    dt = time.perf_counter() - t0
                    elapsed += dt
                    step_in_epoch += 1
                    global_step += 1
                    last_loss = out["loss"]
                    bar.update(1)
                    if global_step % cfg.train.log_every == 0:
                        row = {"step": global_step, "epoch": epoch, **out,
                               "images_per_s": bs / dt, "time": round(elapsed, 3)}
                        row.update(rule.diagnostics())
                        metrics_file.write(json.dumps(row) + "\n")
                        metrics_file.flush()
                        if writer is not None:
                            for k, v in row.items():
                                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                                    writer.add_scalar(k, v, global_step)
                        bar.set_postfix(loss=f"{last_loss:.4g}")
                    halt = stop.signal is not None or (stop_after_steps is not None
                                                       and global_step >= stop_after_steps)
                    if halt or global_step % cfg.train.checkpoint_every == 0:
                        checkpoint()
                    if halt:
                        name = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}.get(stop.signal, "stop")
                        raise TrainingInterrupted(
                            f"{name}: stopped at epoch {epoch}, step {step_in_epoch} (global step "
                            f"{global_step}); checkpoint written to {ckpt_path}. Continue with: "
                            f"biossl train --resume {run_dir}")
                print(f"[{cfg.name}] epoch {epoch + 1}/{total_epochs} loss {last_loss:.4g} "
                      f"({time.perf_counter() - t_epoch:.1f}s)", file=sys.stderr if show else sys.stdout,
                      flush=True)
                epoch += 1
                step_in_epoch = 0
                checkpoint(done=epoch >= total_epochs)
    finally:
        bar.close()
        metrics_file.close()
        if writer is not None:
            writer.close()
    return {"run_dir": str(run_dir), "steps": global_step, "done": True, "train_seconds": elapsed,
            "images_per_s": global_step * bs / max(elapsed, 1e-9), "final_loss": last_loss}
