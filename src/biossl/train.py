"""The training loop: seeded data order and views, progress, metrics, atomic checkpoints,
resume (also mid-epoch and, for GLL, mid-stack), clean stops on SIGINT/SIGTERM and a stop
with the truth about what was saved when the loss blows up.

Run directory layout::

    RUN_DIR/config.yaml      resolved config (every default written out)
    RUN_DIR/metrics.jsonl    one JSON object per logged step (and one per resume that changed the config)
    RUN_DIR/tb/              TensorBoard event files (when tensorboard is installed)
    RUN_DIR/checkpoint.pt    latest complete training state (atomic)
    RUN_DIR/diverged.json    where and why the run diverged (until it is resumed with a change)
    RUN_DIR/.lock            flock'ed while a process trains the run (see biossl.rundir)

A run directory is trained by one process at a time; a directory holding anything of a run
is only continued (``resume``) or, when asked, deleted first (``overwrite``).

Resuming with a changed config (the run's config.yaml edited, or ``key=value`` overrides):
the keys in :data:`APPLIED_ON_RESUME` take effect from the resume on (a new lr, weight decay
or momentum is written into every optimizer; more epochs extend a finished run) and are
recorded in config.yaml, the checkpoint and a ``resume_config_change`` row of metrics.jsonl;
a change to any other key (shapes, data, views, seed, batch size, rule, objective) is refused
with the list of changed keys, because the saved state or data order depends on it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from biossl.assemble import Assembly, assemble
from biossl.checkpoint import is_disk_full, load, save_atomic, write_text_atomic
from biossl.config import ConfigError, RunConfig, TrainConfig, apply_overrides, build_config
from biossl.data import load_dataset
from biossl.divergence import LossWatch
from biossl.rules.base import NonFiniteLoss
from biossl.rundir import (CHECKPOINT, DIVERGED, METRICS, RUN_CONFIG, TENSORBOARD, RunDirError,
                           lock_run, make_writable_dir, q, remove_run_files,
                           remove_stray_temp_files, run_contents)

__all__ = ["CHECKPOINT", "RUN_CONFIG", "TrainingInterrupted", "TrainingDiverged", "CheckpointWriteError",
           "train", "load_run_config", "save_run_config", "run_config_text", "epoch_order"]


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM stop; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.exit_code = 128 + (signum or signal.SIGINT)


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN/inf or explodes; the message says what was saved."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint (or metrics row) could not be written: disk full, permissions; the
    previous checkpoint is intact."""


APPLIED_ON_RESUME = ("name", "train.epochs", "train.lr", "train.weight_decay", "train.momentum",
                     "train.threads", "train.precision", "train.channels_last",
                     "train.compile", "train.checkpoint_every", "train.checkpoint_minutes",
                     "train.log_every", "train.divergence_factor", "rule.feedback_lr",
                     "rule.diagnostics_every", "data.root", "data.download", "eval.")
"""Config keys (or prefixes, ending in '.') a resumed run may change; nothing saved depends
on them. Optimizer hyper-parameters are written into the restored optimizers."""


DIVERGENCE_REMEDIES = ("train.lr", "train.weight_decay", "train.momentum", "train.precision",
                       "train.divergence_factor", "rule.feedback_lr")
"""Changes that let a diverged run be resumed (the same settings replay the same blow-up)."""


def _remedy_settings(cfg: RunConfig) -> dict:
    flat = _flat(cfg.to_dict())
    return {k: flat.get(k) for k in DIVERGENCE_REMEDIES}


def run_config_text(cfg: RunConfig) -> str:
    """The resolved config as a run directory stores it (every default written out)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_run_config(cfg: RunConfig, run_dir: str | Path) -> None:
    write_text_atomic(run_config_text(cfg), Path(run_dir) / RUN_CONFIG)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config.yaml of a run; a missing, unreadable or invalid one is a clear error."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); "
                          f"create one with: biossl train CONFIG --out {q(run_dir)}")
    fix = (f"fix it by hand, or delete it and run biossl train --resume {q(run_dir)}, which "
           f"rewrites it from the config stored in the checkpoint")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(e).split())}); {fix}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; {fix}")
    try:
        return build_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _say(text: str) -> None:
    """Write to stderr from a signal handler (os.write: print() may be mid-call already)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class _StopNow(BaseException):
    """A second signal while a step runs: leave at once (not an Exception: nothing catches it)."""

    def __init__(self, signum: int):
        self.signum = signum


class _StopFlag:
    """First SIGINT/SIGTERM: a flag the loop checks after each step (it says so at once).
    A second one: :class:`_StopNow` right away, except while a checkpoint is being written,
    which is then finished first (``count`` tells the writer to stop after it), so the saved
    state is never lost."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.count = 0
        self.saving = False
        self._old: dict = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if self.signal is None:
            self.signal = signum
            _say(f"\nbiossl: {name} received: stopping after the current step, then saving a "
                 f"checkpoint (send it again to stop at once; the last checkpoint stays intact)\n")
        elif self.saving:
            _say(f"\nbiossl: {name} again: finishing the checkpoint being written, then stopping\n")
        else:
            raise _StopNow(signum)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def autocast_for(cfg: RunConfig, device: torch.device):
    """bf16 autocast when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tensorboard(run_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    # purge_step: TensorBoard drops the earlier files' events from this step on (redone steps)
    return SummaryWriter(str(run_dir / TENSORBOARD), purge_step=purge_step)


def _trim_metrics(path: Path, upto_step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone), a
    line a kill cut short, and the resume events of attempts that saved nothing after it."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if row.get("step", 0) < upto_step or (row.get("step", 0) == upto_step and "event" not in row):
            keep.append(ln)
    write_text_atomic("".join(ln + "\n" for ln in keep), path)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple]:
    """{key: (old, new)} for every key whose value differs (flattened, 'train.lr')."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _applied_on_resume(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in APPLIED_ON_RESUME)


def _show(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changes.items())


def _describe(run_dir: Path, names: list[str]) -> str:
    """The run files, with what they hold (for --overwrite and refusals)."""
    out = []
    for name in names:
        p = run_dir / name
        if name == CHECKPOINT:
            try:
                st = load(p)
                out.append(f"{name} (epoch {st['epoch']}, global step {st['global_step']})")
            except Exception:
                out.append(f"{name} (unreadable)")
        elif name == METRICS:
            out.append(f"{name} ({sum(1 for ln in p.read_text().splitlines() if ln.strip())} rows)")
        elif p.is_dir():
            out.append(f"{name}/")
        else:
            out.append(name)
    return ", ".join(out)


class _Resume:
    """What a resumed run starts from: its config (possibly changed) and its saved state."""

    def __init__(self, cfg: RunConfig, state: dict | None, changes: dict[str, tuple]):
        self.cfg, self.state, self.changes = cfg, state, changes


def _prepare_resume(cfg: RunConfig | None, overrides: list[str], run_dir: Path) -> _Resume:
    contents = run_contents(run_dir)
    if not contents:
        raise RunDirError(f"--resume: {run_dir} holds no run; start one with: "
                          f"biossl train CONFIG --out {q(run_dir)}")
    ckpt = run_dir / CHECKPOINT
    state = load(ckpt) if ckpt.is_file() else None
    stored = None
    if state is not None:
        try:
            stored = build_config(state["config"])
        except ConfigError as e:
            raise RunDirError(f"the config stored in {ckpt} is no longer valid ({e}); this run was "
                              f"made by another version of biossl: continue it with that version") from None
    if cfg is None:
        if (run_dir / RUN_CONFIG).is_file():
            cfg = load_run_config(run_dir)
        elif stored is not None:
            _say(f"biossl: {run_dir / RUN_CONFIG} is missing: rewriting it from the checkpoint's config\n")
            cfg = stored
        else:
            raise RunDirError(f"--resume: {run_dir} has neither config.yaml nor checkpoint.pt "
                              f"(only {', '.join(contents)}); start it again: biossl train CONFIG "
                              f"--out {q(run_dir)} --overwrite")
    if overrides:
        cfg = build_config(apply_overrides(cfg.to_dict(), list(overrides)))
    if state is None:
        # stopped before its first checkpoint: nothing to continue; the same config from step 0
        stale = [n for n in contents if n != RUN_CONFIG]
        _say(f"biossl: {run_dir} has no checkpoint yet (it stopped before its first one): "
             f"training from step 0 with its config" + (f"; replacing {', '.join(stale)}" if stale else "") + "\n")
        remove_run_files(run_dir, stale)
        return _Resume(cfg, None, {})
    changes = config_changes(stored, cfg)
    refused = {k: v for k, v in changes.items() if not _applied_on_resume(k)}
    if refused:
        raise ConfigError(
            f"cannot resume {run_dir}: its config differs from the one its checkpoint was trained "
            f"with in keys the saved state or the data order depends on: {_show(refused)}. Fix: put "
            f"those values back (in {run_dir / RUN_CONFIG}, or drop those overrides), or train the "
            f"new config as a new run: biossl train {q(run_dir / RUN_CONFIG)} --out NEW_DIR. A resume "
            f"may change only: {', '.join(k + '*' if k.endswith('.') else k for k in APPLIED_ON_RESUME)}")
    info = json.loads((run_dir / DIVERGED).read_text()) if (run_dir / DIVERGED).is_file() else None
    if info is not None and info.get("settings") == _remedy_settings(cfg):
        raise TrainingDiverged(
            f"{run_dir} diverged at global step {info.get('global_step')} ({info.get('reason')}); "
            f"resuming with the same settings replays the same batches and diverges again. Fix: "
            f"{info.get('fix')}")
    return _Resume(cfg, state, changes)


def _check_resumable_changes(res: _Resume, rule, epoch: int, step_in_epoch: int, run_dir: Path) -> None:
    """Refuse epoch changes the saved position or schedule cannot follow."""
    if "train.epochs" not in res.changes:
        return
    old, new = res.changes["train.epochs"]
    if rule.num_epochs() != res.cfg.train.epochs:
        raise ConfigError(f"cannot resume {run_dir} with train.epochs {old} → {new}: for rule "
                          f"{res.cfg.rule.name} train.epochs is per stage, so the change would move the "
                          f"stages' schedule under the saved state. Fix: put train.epochs={old} back, or "
                          f"start a new run with the new value")
    started = epoch + (1 if step_in_epoch else 0)
    if new < started:
        raise ConfigError(f"cannot resume {run_dir} with train.epochs={new}: {started} epochs have "
                          f"already been trained. Fix: give train.epochs ≥ {started}")


def train(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          overrides: list[str] = (), progress: bool | None = None,
          stop_after_steps: int | None = None) -> dict:
    """Train ``cfg`` into ``run_dir``; returns a summary dict.

    ``resume``: continue the run in ``run_dir``; ``cfg`` (default: its config.yaml) and
    ``overrides`` may change the keys in :data:`APPLIED_ON_RESUME`. ``overwrite``: delete a
    previous run in ``run_dir`` first (it says what it deletes). ``stop_after_steps``
    simulates an interruption after that many global steps (tests).
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the directory and --overwrite deletes it: give one")
    if not resume and cfg is None:
        raise ConfigError("give a CONFIG to train, or resume a run")
    if resume and not run_dir.is_dir():
        raise RunDirError(f"--resume: there is no directory {run_dir}; start a run there with: "
                          f"biossl train CONFIG --out {q(run_dir)}")
    make_writable_dir(run_dir)
    with lock_run(run_dir), _StopFlag() as stop:
        loop = None
        try:
            stray = remove_stray_temp_files(run_dir)
            if stray:
                _say(f"biossl: removed {len(stray)} temporary file(s) an earlier killed process left "
                     f"in {run_dir}: {', '.join(stray)}\n")
            if resume:
                res = _prepare_resume(cfg, list(overrides), run_dir)
            else:
                contents = run_contents(run_dir)
                if contents and not overwrite:
                    raise RunDirError(
                        f"{run_dir} already holds a run ({_describe(run_dir, contents)}); continue it "
                        f"with biossl train --resume {q(run_dir)}, delete it with --overwrite, or give "
                        f"another --out directory")
                if contents:
                    _say(f"biossl: --overwrite: deleting the previous run in {run_dir}: "
                         f"{_describe(run_dir, contents)}\n")
                    remove_run_files(run_dir, contents)
                if overrides:
                    cfg = build_config(apply_overrides(cfg.to_dict(), list(overrides)))
                res = _Resume(cfg, None, {})
            loop = _Loop(res, run_dir, stop, progress, stop_after_steps)
            return loop.run()
        except _StopNow as e:  # a second signal before the loop's own handling
            if loop is not None:
                raise loop._interrupted(e.signum, saved_now=False, second=True) from None
            raise TrainingInterrupted(f"{signal.Signals(e.signum).name}: stopped before training "
                                      f"started", e.signum) from None


def _write_failed(e: OSError, run_dir: Path, saved_step: int | None) -> CheckpointWriteError:
    what = "disk full" if is_disk_full(e) else f"{type(e).__name__}: {e}"
    saved = ("the previous checkpoint (global step %d) is intact" % saved_step if saved_step is not None
             else "nothing of it is lost that was saved before")
    fix = (f"free space on that disk (df -h {q(run_dir)})" if is_disk_full(e)
           else "make the directory writable")
    return CheckpointWriteError(f"{what} while writing to {run_dir}: this run stopped; {saved}. Fix: "
                                f"{fix}, then continue with: biossl train --resume {q(run_dir)}")


class _Loop:
    """One training process on a locked run directory."""

    def __init__(self, res: _Resume, run_dir: Path, stop: _StopFlag, progress, stop_after_steps):
        self.res, self.cfg, self.run_dir, self.stop = res, res.cfg, run_dir, stop
        self.ckpt_path = run_dir / CHECKPOINT
        self.progress, self.stop_after_steps = progress, stop_after_steps
        self.epoch, self.step_in_epoch, self.global_step, self.elapsed = 0, 0, 0, 0.0
        self.saved_step: int | None = None  # global step of the newest checkpoint on disk
        self.loss_on_saved: float | None = None  # the first loss measured on those weights

    # ---------------------------------------------------------------- set-up
    def run(self) -> dict:
        cfg, run_dir, res = self.cfg, self.run_dir, self.res
        asm: Assembly = assemble(cfg)
        self.rule, recipe, device = asm.rule, asm.recipe, asm.device
        rule = self.rule
        data = load_dataset(cfg.data.name, asm.spec.ssl_split, root=cfg.data.root, download=cfg.data.download)
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
        self.view_gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 31 + 1)
        self.watch = LossWatch(cfg.train.divergence_factor)
        total_epochs = rule.num_epochs()
        total_steps = total_epochs * steps_per_epoch
        frozen = rule.encoder_frozen_steps()
        if frozen >= total_steps:
            raise ConfigError(
                f"rule {cfg.rule.name} leaves the encoder untouched for its first {frozen} steps (its "
                f"warm-up, rule.feedback_warmup) but this run has only {total_steps} steps "
                f"({total_epochs} epochs × {steps_per_epoch}): it would train nothing and probe as "
                f"random init. Fix: lower rule.feedback_warmup below {total_steps} or train longer "
                f"(train.epochs, data.train_subset)")

        self.epoch, self.step_in_epoch, self.global_step, self.elapsed = 0, 0, 0, 0.0
        if res.state is not None:
            self._restore(res.state)
            _check_resumable_changes(res, rule, self.epoch, self.step_in_epoch, run_dir)
            if self.epoch >= total_epochs:
                longer = (f"biossl train --resume {q(run_dir)} train.epochs={2 * total_epochs}"
                          if total_epochs == cfg.train.epochs else "start a new run")
                _say(f"biossl: {run_dir} is finished ({total_epochs} epochs, global step "
                     f"{self.global_step}): nothing to train. To train longer: {longer}\n")
                return {"run_dir": str(run_dir), "steps": self.global_step, "done": True, "resumed": True}
        with self._writing():
            if res.state is not None:
                _trim_metrics(run_dir / METRICS, self.global_step)
            # written only now: a run refused during set-up leaves the directory as it was
            save_run_config(cfg, run_dir)
            (run_dir / DIVERGED).unlink(missing_ok=True)
            self.metrics_file = open(run_dir / METRICS, "a")
            if res.changes:
                _say(f"biossl: resuming with a changed config (applied from global step "
                     f"{self.global_step}): {_show(res.changes)}\n")
                self._log({"step": self.global_step, "event": "resume_config_change",
                           "changed": {k: [a, b] for k, (a, b) in res.changes.items()}})
        writer = _tensorboard(run_dir, self.global_step if self.global_step else None)
        show = sys.stderr.isatty() if self.progress is None else self.progress
        bar = tqdm(total=total_steps, initial=self.epoch * steps_per_epoch + self.step_in_epoch,
                   disable=not show, desc=cfg.name, unit="step", dynamic_ncols=True)
        try:
            return self._train(images, recipe, device, bs, n, steps_per_epoch, total_epochs, bar,
                               writer, show)
        except _StopNow as e:
            raise self._interrupted(e.signum, saved_now=False, second=True) from None
        finally:
            bar.close()
            self.metrics_file.close()
            if writer is not None:
                writer.close()

    def _restore(self, state: dict) -> None:
        rule = self.rule
        fresh = [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
                 for o in rule.optimizers]
        try:
            rule.load_state_dict(state["rule"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise RunDirError(
                f"the checkpoint in {self.run_dir} does not fit the model of its config "
                f"({' '.join(str(e).split())[:300]}); its config.yaml was probably edited in a key "
                f"that changes shapes. Fix: restore config.yaml (delete it: biossl train --resume "
                f"rewrites it from the checkpoint), or start a new run") from None
        if self.res.changes:
            # the config owns hyper-parameters: a changed lr / weight decay / momentum applies now
            for o, groups in zip(rule.optimizers, fresh):
                for g, hyper in zip(o.param_groups, groups):
                    g.update(hyper)
        self.view_gen.set_state(state["view_generator"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = self.saved_step = state["global_step"]
        self.elapsed = state.get("elapsed", 0.0)
        self.watch.load_state_dict(state.get("loss_watch", {}))

    # ---------------------------------------------------------------- pieces
    @contextlib.contextmanager
    def _writing(self):
        """A failed write to the run directory (disk full, permissions) becomes a message
        saying which checkpoint is intact."""
        try:
            yield
        except OSError as e:
            raise _write_failed(e, self.run_dir, self.saved_step) from None

    def _log(self, row: dict) -> None:
        with self._writing():
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()

    def _checkpoint(self, done: bool = False) -> None:
        state = {"rule": self.rule.state_dict(), "view_generator": self.view_gen.get_state(),
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "global_step": self.global_step, "elapsed": self.elapsed, "done": done,
                 "config": self.cfg.to_dict(), "loss_watch": self.watch.state_dict()}
        self.stop.saving = True
        try:
            save_atomic(state, self.ckpt_path)
        except OSError as e:
            raise _write_failed(e, self.run_dir, self.saved_step) from None
        except RuntimeError as e:  # in case torch wraps the writer's OSError
            if is_disk_full(e):
                raise _write_failed(OSError(28, "No space left on device"), self.run_dir, self.saved_step) from None
            raise
        finally:
            self.stop.saving = False
        self.saved_step, self.loss_on_saved = self.global_step, None
        self.last_save = time.monotonic()
        if self.stop.count >= 2:  # the second signal came while this checkpoint was written
            raise self._interrupted(self.stop.signal, saved_now=True, second=True)

    def _interrupted(self, signum: int | None, saved_now: bool, second: bool = False) -> TrainingInterrupted:
        name = signal.Signals(signum).name if signum else "stop"
        where = f"epoch {self.epoch}, step {self.step_in_epoch} (global step {self.global_step})"
        if saved_now:
            saved = f"checkpoint written to {self.ckpt_path}"
        elif self.saved_step is not None:
            saved = (f"the step in progress is not saved; the checkpoint {self.ckpt_path} from global "
                     f"step {self.saved_step} is intact" if self.global_step > self.saved_step or second
                     else f"no step had run; the checkpoint {self.ckpt_path} from global step "
                          f"{self.saved_step} is intact")
        else:
            saved = "nothing was saved yet (no step had finished)"
        how = "second " if second else ""
        hint = (f"Continue with: biossl train --resume {q(self.run_dir)}" if self.saved_step is not None
                else f"Start it again with: biossl train --resume {q(self.run_dir)}")
        return TrainingInterrupted(f"{how}{name}: stopped at {where}; {saved}. {hint}", signum)

    def _diverged(self, reason: str) -> TrainingDiverged:
        cfg, run_dir = self.cfg, self.run_dir
        lr = min(cfg.train.lr / 10, TrainConfig().lr)  # a tenth, at most the default
        where = (f"training diverged at epoch {self.epoch}, step {self.step_in_epoch} (global step "
                 f"{self.global_step + 1}): {reason} (rule {cfg.rule.name}, objective "
                 f"{cfg.objective.name}, {cfg.train.optimizer} lr {cfg.train.lr:g}).")
        restart = (f"biossl train {q(run_dir / RUN_CONFIG)} train.lr={lr:.2g} --out {q(run_dir)} "
                   f"--overwrite")
        if self.saved_step is None:
            truth = "Nothing was saved: it diverged before its first checkpoint."
            fix = f"start again with a lower learning rate: {restart}"
        elif self.loss_on_saved is None:
            truth = (f"The checkpoint {self.ckpt_path} (global step {self.saved_step}) holds the weights "
                     f"that produced this loss, so resuming from it cannot recover.")
            fix = f"start again with a lower learning rate: {restart}"
        else:
            truth = (f"The checkpoint {self.ckpt_path} is from global step {self.saved_step} (the loss on "
                     f"its weights was {self.loss_on_saved:.4g}) and is kept.")
            fix = (f"resume it with a lower learning rate (applied to every optimizer): biossl train "
                   f"--resume {q(run_dir)} train.lr={lr:.2g}, or start again: {restart}")
        write_text_atomic(json.dumps({"global_step": self.global_step + 1, "reason": reason,
                                      "settings": _remedy_settings(cfg), "checkpoint_step": self.saved_step,
                                      "fix": fix}), run_dir / DIVERGED)
        return TrainingDiverged(f"{where} {truth} Fix: {fix}")

    # ---------------------------------------------------------------- the loop
    def _train(self, images, recipe, device, bs, n, steps_per_epoch, total_epochs, bar, writer, show) -> dict:
        cfg, rule, stop = self.cfg, self.rule, self.stop
        every_s = cfg.train.checkpoint_minutes * 60
        self.last_save = time.monotonic()
        steps_here = 0
        last_loss = float("nan")
        while self.epoch < total_epochs:
            rule.start_epoch(self.epoch)
            order = epoch_order(n, cfg.train.seed, self.epoch)
            rule.train()
            t_epoch = time.perf_counter()
            while self.step_in_epoch < steps_per_epoch:
                if stop.signal is not None and steps_here == 0:  # a signal during set-up
                    raise self._interrupted(stop.signal, saved_now=False)
                t0 = time.perf_counter()
                idx = order[self.step_in_epoch * bs:(self.step_in_epoch + 1) * bs]
                x = images[idx.to(images.device)].to(device, non_blocking=True)
                batch = recipe(x, self.view_gen)
                if cfg.train.channels_last and batch.x.dim() == 4 and device.type == "cuda":
                    batch.x = batch.x.contiguous(memory_format=torch.channels_last)
                try:
                    with autocast_for(cfg, device):
                        out = rule.step(batch)
                    reason = self.watch.check(out["loss"])
                except NonFiniteLoss as e:
                    reason = str(e)
                if reason is not None:
                    raise self._diverged(reason)
                if self.loss_on_saved is None:
                    self.loss_on_saved = out["loss"]
                dt = time.perf_counter() - t0
                self.elapsed += dt
                self.step_in_epoch += 1
                self.global_step += 1
                steps_here += 1
                last_loss = out["loss"]
                bar.update(1)
                if self.global_step % cfg.train.log_every == 0:
                    row = {"step": self.global_step, "epoch": self.epoch, **out,
                           "images_per_s": bs / dt, "time": round(self.elapsed, 3)}
                    row.update(rule.diagnostics())
                    self._log(row)
                    if writer is not None:
                        for k, v in row.items():
                            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                                writer.add_scalar(k, v, self.global_step)
                    bar.set_postfix(loss=f"{last_loss:.4g}")
                halt = stop.signal is not None or (self.stop_after_steps is not None
                                                   and self.global_step >= self.stop_after_steps)
                first = steps_here == 1 and self.saved_step is None  # fails fast if it cannot save
                if (halt or first or self.global_step % cfg.train.checkpoint_every == 0
                        or time.monotonic() - self.last_save >= every_s):
                    self._checkpoint()
                if halt:
                    raise self._interrupted(stop.signal, saved_now=True)
            print(f"[{cfg.name}] epoch {self.epoch + 1}/{total_epochs} loss {last_loss:.4g} "
                  f"({time.perf_counter() - t_epoch:.1f}s)", file=sys.stderr if show else sys.stdout,
                  flush=True)
            self.epoch += 1
            self.step_in_epoch = 0
            self._checkpoint(done=self.epoch >= total_epochs)
        return {"run_dir": str(self.run_dir), "steps": self.global_step, "done": True,
                "train_seconds": self.elapsed,
                "images_per_s": self.global_step * bs / max(self.elapsed, 1e-9), "final_loss": last_loss}
