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

Under a torchrun launch every process runs :func:`train`: on its shard of each global batch
(data parallel), or as one stage group of a replica (layer-parallel, parallel.stage_groups > 1:
group 0 runs this loop, the later groups follow it). biossl.distributed.launch: rank 0 alone
touches the run directory; biossl.distributed.part: what each process trains;
docs/distributed.md, docs/layer_parallel.md.
A run directory is trained by one process at a time (biossl.rundir); a directory holding
anything of a run is only continued or, when asked, deleted first, and a resume may change
some keys of the config (biossl.resume). Signals: biossl.stopping. Blow-ups: biossl.divergence.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from biossl.assemble import Assembly
from biossl.checkpoint import is_disk_full, save_atomic, write_text_atomic
from biossl.config import ConfigError, RunConfig, TrainConfig
from biossl.data import load_dataset
from biossl.distributed.launch import World, batchnorm_note
from biossl.distributed.part import Part, take_part
from biossl.divergence import LossWatch
from biossl.layout import channels_last
from biossl.naming import rule_name
from biossl.resume import (StartPoint, TrainingDiverged, check_resumable_changes, prepare_fresh,
                           prepare_resume, remedy_settings, show_changes)
from biossl.rules.base import NonFiniteLoss
from biossl.seeds import generator
from biossl.rundir import (CHECKPOINT, DATA_SOURCE, DIVERGED, METRICS, RUN_CONFIG, TENSORBOARD, RunDirError,
                           lock_run, make_writable_dir, note, q, remove_stray_temp_files, save_run_config)
from biossl.stopping import StopFlag, StopNow

__all__ = ["TrainingInterrupted", "TrainingDiverged", "CheckpointWriteError", "train", "epoch_order"]


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM stop; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.exit_code = 128 + (signum or signal.SIGINT)


class CheckpointWriteError(RuntimeError):
    """A checkpoint (or metrics row) could not be written: disk full, permissions; the
    previous checkpoint is intact."""


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    return torch.randperm(n, generator=generator(seed, "data-order", epoch))


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


def train(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          overrides: list[str] = (), progress: bool | None = None,
          stop_after_steps: int | None = None) -> dict:
    """Train ``cfg`` into ``run_dir``; returns a summary dict.

    ``resume``: continue the run in ``run_dir``; ``cfg`` (default: its config.yaml) and
    ``overrides`` may change the keys in :data:`biossl.resume.APPLIED_ON_RESUME`. ``overwrite``: delete a
    previous run in ``run_dir`` first (it says what it deletes). ``stop_after_steps``
    simulates an interruption after that many global steps (tests).
    """
    world = World.from_env()  # one process, or this one's place in a torchrun launch
    with world.joined(agreed=(TrainingInterrupted, TrainingDiverged)):
        return _train_as(world, cfg, run_dir, resume, overwrite, overrides, progress, stop_after_steps)


def _train_as(world: World, cfg, run_dir, resume, overwrite, overrides, progress, stop_after_steps) -> dict:
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the directory and --overwrite deletes it: give one")
    if not resume and cfg is None:
        raise ConfigError("give a CONFIG to train, or resume a run")
    if resume and not run_dir.is_dir():
        raise RunDirError(f"--resume: there is no directory {run_dir}; start a run there with: "
                          f"biossl train CONFIG --out {q(run_dir)}")
    with contextlib.ExitStack() as held, StopFlag(announce=world.is_main) as stop:
        def set_up():  # rank 0 only: the run directory is its alone
            make_writable_dir(run_dir)
            held.enter_context(lock_run(run_dir))
            stray = remove_stray_temp_files(run_dir)
            if stray:
                note(f"removed {len(stray)} temporary file(s) an earlier killed process left "
                     f"in {run_dir}: {', '.join(stray)}")
            return (prepare_resume(cfg, list(overrides), run_dir) if resume
                    else prepare_fresh(cfg, list(overrides), run_dir, overwrite))

        loop = None
        try:
            res = world.from_main(set_up)
            world = world.arranged(res.cfg.parallel.stage_groups)
            with take_part(world, res.cfg) as part:
                if part.serve is not None:  # a later layer-parallel stage group: no data, no run dir
                    return part.serve()
                loop = _Loop(res, run_dir, stop, progress, stop_after_steps, world, part)
                return loop.run()
        except StopNow as e:  # a second signal before the loop's own handling
            if loop is not None:
                raise loop.stopped(e.signum, saved_now=False, second=True) from None
            raise TrainingInterrupted(f"{signal.Signals(e.signum).name}: stopped before training "
                                      f"started", e.signum) from None


def _write_failed(e: OSError, run_dir: Path, saved_step: int | None) -> CheckpointWriteError:
    what = "disk full" if is_disk_full(e) else f"{type(e).__name__}: {e}"
    saved = ("the previous checkpoint (global step %d) is intact" % saved_step if saved_step is not None
             else "no checkpoint had been written yet")
    fix = (f"free space on that disk (df -h {q(run_dir)})" if is_disk_full(e)
           else "make the directory writable")
    return CheckpointWriteError(f"{what} while writing to {run_dir}: this run stopped; {saved}. Fix: "
                                f"{fix}, then continue with: biossl train --resume {q(run_dir)}")


class _Loop:
    """One training process on a locked run directory."""

    def __init__(self, res: StartPoint, run_dir: Path, stop: StopFlag, progress, stop_after_steps,
                 world: World, part: Part):
        self.res, self.cfg, self.run_dir, self.stop, self.world = res, res.cfg, run_dir, stop, world
        self.part = part
        self.metrics_file = None  # rank 0's
        self.ckpt_path = run_dir / CHECKPOINT
        self.progress, self.stop_after_steps = progress, stop_after_steps
        self.epoch, self.step_in_epoch, self.global_step, self.elapsed = 0, 0, 0, 0.0
        self.saved_step: int | None = None  # global step of the newest checkpoint on disk
        self.loss_on_saved: float | None = None  # the first loss measured on those weights

    # ---------------------------------------------------------------- set-up
    def run(self) -> dict:
        cfg, run_dir, res, world = self.cfg, self.run_dir, self.res, self.world
        shard = world.shard(cfg.train.batch_size)  # this process's rows of every global batch
        asm: Assembly = self.part.asm
        self.rule, recipe, device = self.part.rule, asm.recipe, asm.device  # rule or stage pipeline
        rule = self.rule
        if world.is_main and (bn := batchnorm_note(rule.encoder, world)):
            note(bn)
        with world.main_first():  # rank 0 fills the dataset caches, then the others read them
            data = load_dataset(cfg.data.name, asm.spec.ssl_split, root=cfg.data.root,
                                download=cfg.data.download)
        if world.is_main:
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
        self.view_gen = generator(cfg.train.seed, "views", *world.view_stream(), device=device)
        self.watch = LossWatch(cfg.train.divergence_factor)
        total_epochs = rule.num_epochs()
        total_steps = total_epochs * steps_per_epoch
        frozen = rule.encoder_frozen_steps()
        if frozen >= total_steps:
            raise ConfigError(
                f"transport {cfg.transport.name} leaves the encoder untouched for its first {frozen} steps "
                f"(its warm-up, transport.inverse_warmup) but this run has only {total_steps} steps "
                f"({total_epochs} epochs × {steps_per_epoch}): it would train nothing and probe as "
                f"random init. Fix: lower transport.inverse_warmup below {total_steps} or train longer "
                f"(train.epochs, data.train_subset)")

        self.epoch, self.step_in_epoch, self.global_step, self.elapsed = 0, 0, 0, 0.0
        if res.state is not None:
            self._restore(res.state)
            check_resumable_changes(res, rule, self.epoch, self.step_in_epoch, run_dir)
            if self.epoch >= total_epochs:
                longer = (f"biossl train --resume {q(run_dir)} train.epochs={2 * total_epochs}"
                          if total_epochs == cfg.train.epochs else "start a new run")
                if world.is_main:
                    note(f"{run_dir} is finished ({total_epochs} epochs, global step "
                         f"{self.global_step}): nothing to train. To train longer: {longer}")
                return {"run_dir": str(run_dir), "steps": self.global_step, "done": True, "resumed": True}
        if world.is_main:  # the run directory is rank 0's alone
            self._start_writing(res)
        writer = _tensorboard(run_dir, self.global_step if self.global_step else None) if world.is_main else None
        show = (sys.stderr.isatty() if self.progress is None else self.progress) and world.is_main
        bar = tqdm(total=total_steps, initial=self.epoch * steps_per_epoch + self.step_in_epoch,
                   disable=not show, desc=cfg.name, unit="step", dynamic_ncols=True)
        try:
            return self._train(images, recipe, device, bs, shard, n, steps_per_epoch, total_epochs,
                               bar, writer, show)
        except StopNow as e:
            raise self.stopped(e.signum, saved_now=False, second=True) from None
        finally:
            bar.close()
            if self.metrics_file is not None:
                self.metrics_file.close()
            if writer is not None:
                writer.close()

    def _start_writing(self, res: StartPoint) -> None:
        run_dir = self.run_dir
        with self._writing():
            if res.state is not None:
                _trim_metrics(run_dir / METRICS, self.global_step)
            # written only now: a run refused during set-up leaves the directory as it was
            save_run_config(self.cfg, run_dir)
            (run_dir / DIVERGED).unlink(missing_ok=True)
            self.metrics_file = open(run_dir / METRICS, "a")
            if res.changes:
                note(f"resuming with a changed config (applied from global step "
                     f"{self.global_step}): {show_changes(res.changes)}")
                self._log({"step": self.global_step, "event": "resume_config_change",
                           "changed": {k: [a, b] for k, (a, b) in res.changes.items()}})

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
        self._restore_views(state)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = self.saved_step = state["global_step"]
        self.elapsed = state.get("elapsed", 0.0)
        self.watch.load_state_dict(state.get("loss_watch", {}))

    def _restore_views(self, state: dict) -> None:
        """Each process's view stream as saved; after a change of the number of processes
        every process starts a fresh stream seeded by (rank, global step): the streams are
        per process, so no saved one is this process's (all else resumes exactly)."""
        world = self.world
        saved = state.get("view_generators") or [state["view_generator"]]
        replica, replicas = world.layout.replica, world.layout.replicas  # the processes reading data
        if len(saved) == replicas:
            self.view_gen.set_state(saved[replica])
            return
        self.view_gen = generator(self.cfg.train.seed, "views", replica, state["global_step"],
                                  device=self.view_gen.device)
        if world.is_main:
            note(f"resuming a run saved by {len(saved)} process(es) with {replicas}: the views "
                 f"(crops, flips, saccades) continue from fresh per-process streams; data order, "
                 f"weights, optimizers and the objectives' draws continue exactly")

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
        if self.metrics_file is None:  # not rank 0
            return
        with self._writing():
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()

    def _checkpoint(self, done: bool = False) -> None:
        views = self.world.gather_objects(self.view_gen.get_state())  # every process's stream
        with self._finite():
            rule_state = self.rule.state_dict()  # layer-parallel: each replica's groups' parts
        if not self.world.is_main:
            self.saved_step, self.loss_on_saved = self.global_step, None
            return
        state = {"rule": rule_state, "view_generator": views[0],
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "global_step": self.global_step, "elapsed": self.elapsed, "done": done,
                 "config": self.cfg.to_dict(), "loss_watch": self.watch.state_dict()}
        if self.world.distributed:
            state["view_generators"] = views
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
            raise self.stopped(self.stop.signal, saved_now=True, second=True)

    @contextlib.contextmanager
    def _finite(self):
        """A later stage group's non-finite loss (layer-parallel) may surface when the pipeline
        settles at a log step or checkpoint: the run diverged, as at a step."""
        try:
            yield
        except NonFiniteLoss as e:
            raise self._diverged(str(e)) from None

    def stopped(self, signum: int | None, saved_now: bool, second: bool = False) -> TrainingInterrupted:
        name = signal.Signals(signum).name if signum else "stop"
        where = f"epoch {self.epoch}, step {self.step_in_epoch} (global step {self.global_step})"
        if saved_now:
            saved = f"checkpoint written to {self.ckpt_path}"
        elif self.saved_step is not None:
            saved = (f"nothing after global step {self.saved_step} is saved; the checkpoint "
                     f"{self.ckpt_path} from global step {self.saved_step} is intact")
        else:
            saved = "nothing was saved yet (no step had finished)"
        how = "second " if second else ""
        again = self.world.resume_command(q(self.run_dir))
        hint = (f"Continue with: {again}" if self.saved_step is not None else f"Start it again with: {again}")
        return TrainingInterrupted(f"{how}{name}: stopped at {where}; {saved}. {hint}", signum)

    def _diverged(self, reason: str) -> TrainingDiverged:
        cfg, run_dir = self.cfg, self.run_dir
        lr = min(cfg.train.lr / 10, TrainConfig().lr)  # a tenth, at most the default
        where = (f"training diverged at epoch {self.epoch}, step {self.step_in_epoch} (global step "
                 f"{self.global_step + 1}): {reason} (rule {rule_name(cfg)}, objective "
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
        if self.world.is_main:
            write_text_atomic(json.dumps({"global_step": self.global_step + 1, "reason": reason,
                                          "settings": remedy_settings(cfg),
                                          "checkpoint_step": self.saved_step, "fix": fix}), run_dir / DIVERGED)
        return TrainingDiverged(f"{where} {truth} Fix: {fix}")

    # ---------------------------------------------------------------- the loop
    def _train(self, images, recipe, device, bs, shard, n, steps_per_epoch, total_epochs, bar, writer,
               show) -> dict:
        cfg, rule, stop, world = self.cfg, self.rule, self.stop, self.world
        mine = slice(world.layout.replica * shard, (world.layout.replica + 1) * shard)  # my rows
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
                if stop.signal is not None and steps_here == 0 and not world.distributed:  # in set-up
                    raise self.stopped(stop.signal, saved_now=False)
                t0 = time.perf_counter()
                idx = order[self.step_in_epoch * bs:(self.step_in_epoch + 1) * bs][mine]
                x = images[idx.to(images.device)].to(device, non_blocking=True)
                batch = recipe(x, self.view_gen)
                if cfg.train.channels_last:
                    batch.x = channels_last(batch.x)
                try:
                    out = rule.step(batch)
                    # all processes agree: the global loss (mean of the ranks'), a stop any of
                    # them was asked for, and rank 0's clock for the timed checkpoint
                    out, agreed = world.agree(out, {
                        "stop": stop.signal is not None,
                        "due": world.is_main and time.monotonic() - self.last_save >= every_s}, device)
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
                    with self._finite():
                        row.update(rule.diagnostics())
                    last_loss = row["loss"]  # a layer-parallel step's own loss may still lag a group
                    self._log(row)
                    if writer is not None:
                        for k, v in row.items():
                            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                                writer.add_scalar(k, v, self.global_step)
                    bar.set_postfix(loss=f"{last_loss:.4g}")
                halt = agreed["stop"] > 0 or (self.stop_after_steps is not None
                                              and self.global_step >= self.stop_after_steps)
                first = steps_here == 1 and self.saved_step is None  # fails fast if it cannot save
                if halt or first or self.global_step % cfg.train.checkpoint_every == 0 or agreed["due"]:
                    self._checkpoint()
                if halt:  # a rank that got no signal itself stops as the others (torchrun's SIGTERM)
                    raise self.stopped(stop.signal or (signal.SIGTERM if agreed["stop"] else None),
                                       saved_now=True)
            if world.is_main:
                print(f"[{cfg.name}] epoch {self.epoch + 1}/{total_epochs} loss {last_loss:.4g} "
                      f"({time.perf_counter() - t_epoch:.1f}s)", file=sys.stderr if show else sys.stdout,
                      flush=True)
            self.epoch += 1
            self.step_in_epoch = 0
            self._checkpoint(done=self.epoch >= total_epochs)
        return {"run_dir": str(self.run_dir), "steps": self.global_step, "done": True,
                "train_seconds": self.elapsed,
                "images_per_s": self.global_step * bs / max(self.elapsed, 1e-9), "final_loss": last_loss}
