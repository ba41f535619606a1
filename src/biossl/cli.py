"""Command line: ``biossl list | config | train | eval | bench | compare | audit``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from biossl.config import ConfigError

EPILOG = """examples:
  biossl list
  biossl config fmnist-bp-hinge train.lr=3e-4
  biossl train fmnist-bp-hinge train.epochs=1 --out runs/demo
  biossl train --resume runs/demo
  biossl train --nproc 2 fmnist-bp-hinge --out runs/demo2   (= torchrun --nproc_per_node 2 -m biossl train …)
  biossl eval runs/demo
  biossl bench
  biossl compare fmnist-quick
  biossl audit fmnist-gll-hinge transport.name=urf
"""


def _cmd_list(args) -> int:
    import dataclasses

    from biossl.compare import SUITES_DIR, load_suite
    from biossl.config import RECIPES_DIR, recipe_description, recipe_names
    from biossl.registry import AXES, load_all
    load_all()
    titles = {"dataset": "datasets", "views": "view recipes", "encoder": "encoders",
              "objective": "objectives", "schedule": "schedules (schedule.name: which stages learn when)",
              "transport": "transports (transport.name: how an error reaches a weight)"}
    for axis, reg in AXES.items():
        print(f"{titles[axis]}:")
        for e in reg.entries():
            keys = ""
            if e.config is not None:
                keys = " [" + ", ".join(f.name for f in dataclasses.fields(e.config)) + "]"
            print(f"  {e.name:<16} {e.summary}{keys}")
    print("recipes (biossl train NAME; every key: biossl config NAME):")
    for name in recipe_names():
        print(f"  {name:<22} {recipe_description(RECIPES_DIR / f'{name}.yaml')}")
    print("suites (biossl compare):")
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        suite = load_suite(str(path))
        print(f"  {suite.name:<16} {len(suite.cells)} cells × {len(suite.seeds)} seeds")
    return 0


def _cmd_config(args) -> int:
    from biossl.config import find_recipe, load_config, recipe_description
    from biossl.keys import describe, format_keys
    path = find_recipe(args.config)
    cfg = load_config(path, args.overrides)
    head = f"{path}"
    if desc := recipe_description(path):
        head += f"\n{desc}"
    print(f"{head}\n\n{format_keys(describe(cfg))}")
    return 0


def _default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _launch_train(args) -> int:
    """``biossl train --nproc N …``: the same command under torchrun (N processes, one node);
    --eval runs here afterwards, once."""
    from biossl.config import load_config
    from biossl.distributed.launcher import check_launch, run_torchrun
    rest = list(args.train_argv)
    run_dir = args.resume or args.out
    if args.config and not args.resume:  # a config the launch cannot run fails here, once
        cfg = load_config(args.config, args.overrides)
        check_launch(args.nproc, cfg.parallel.stage_groups, cfg.train.batch_size)
        if not run_dir:  # one name for every process
            run_dir = str(_default_out(cfg.name))
            rest += ["--out", run_dir]
    code = run_torchrun(args.nproc, [a for a in rest if a != "--eval"])
    if code == 0 and args.eval:
        return _eval(run_dir, [])
    return code


def _cmd_train(args) -> int:
    from biossl.config import load_config
    from biossl.rundir import q
    from biossl.train import train
    if args.nproc is not None:
        return _launch_train(args)
    if args.resume:
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--out is not used with --resume: the run continues in {args.resume}; "
                              f"drop --out {q(args.out)}")
        if args.overwrite:
            raise ConfigError("--resume continues the run and --overwrite deletes it: give one")
        # the positional CONFIG slot holds the first override here (train --resume RUN train.lr=X)
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"--resume RUN_DIR continues the run with its own config.yaml; drop "
                              f"{bad[0]!r} (only key=value overrides may follow, e.g. train.lr=1e-4)")
        summary = train(None, args.resume, resume=True, overrides=overrides)
        run_dir = args.resume
    else:
        if not args.config:
            raise ConfigError("give a CONFIG (a YAML path or a recipe name: biossl list), or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        run_dir = args.out or _default_out(cfg.name)
        summary = train(cfg, run_dir, overwrite=args.overwrite)
    if not _speaks():  # one summary (and one probe table) per launch
        return 0
    print(json.dumps(summary))
    if args.eval:
        return _eval(run_dir, [])
    return 0


def _eval(run_dir, overrides) -> int:
    from biossl.run_eval import evaluate_run, probe_stem
    evaluate_run(run_dir, overrides)
    stem = probe_stem(run_dir, overrides)
    print(stem.with_suffix(".md").read_text().rstrip())  # the table as written (e.g. "phone" columns)
    print(f"\nwritten: {stem.with_suffix('.csv')}, {stem.name}.md, {stem.name}.png")
    return 0


def _cmd_eval(args) -> int:
    return _eval(args.run_dir, list(args.overrides) + list(args.set_overrides))


def _cmd_bench(args) -> int:
    from biossl.bench import main as bench_main
    return bench_main(args)


def _cmd_compare(args) -> int:
    from biossl.compare import main as compare_main
    return compare_main(args)


def _cmd_audit(args) -> int:
    from biossl.audit import audit_config
    from biossl.audit.report import format_report
    from biossl.config import load_config
    if args.suite:
        from biossl.audit.suite import audit_suite
        if args.config or args.overrides or args.json:
            raise ConfigError("--suite audits a suite's cells as they are: drop CONFIG, overrides and --json")
        print(audit_suite(args.suite, batch=args.batch), end="")
        return 0
    if not args.config:
        raise ConfigError("give a CONFIG (a YAML path or a recipe name: biossl list), or --suite SUITE")
    report = audit_config(load_config(args.config, args.overrides), batch=args.batch)
    print(format_report(report), end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
        print(f"\nwritten: {args.json}")
    return 0


def _count(least: int):
    """argparse type: an integer ≥ ``least`` (the parser names the option and exits 2)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {least}, got {text!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"must be ≥ {least}, got {n}")
        return n
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="biossl", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="registered datasets, views, encoders, objectives, schedules, transports, recipes, suites")
    s.set_defaults(fn=_cmd_list)
    s = sub.add_parser("config", help="every key of a recipe: type, value, default and doc")
    s.add_argument("config", help="YAML path or recipe name (biossl list)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 schedule.name=greedy transport.name=urf")
    s.set_defaults(fn=_cmd_config)
    s = sub.add_parser("train", help="self-supervised training of one config",
                       epilog="every key a recipe takes, with its type, default and doc: "
                              "biossl config RECIPE [overrides]")
    s.add_argument("config", nargs="?", help="YAML path or recipe name (biossl list)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 schedule.name=greedy transport.name=urf")
    s.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    s.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its checkpoint; key=value overrides may change lr, "
                        "epochs and the other keys a resume can apply (others are refused)")
    s.add_argument("--overwrite", action="store_true",
                   help="delete a previous run in --out first (it lists what it deletes)")
    s.add_argument("--eval", action="store_true", help="run the probe table after training")
    s.add_argument("--nproc", type=_count(1), metavar="N",
                   help="train with N processes on this machine (data parallel; train.batch_size stays "
                        "the global batch): runs torchrun --standalone --nproc_per_node N -m biossl "
                        "train … (docs/distributed.md)")
    s.set_defaults(fn=_cmd_train)
    s = sub.add_parser("eval", help="per-stage probe table of a run (and its random-init encoder)")
    s.add_argument("run_dir")
    s.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.dataset=digits")
    s.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an eval.* override (repeatable), e.g. --set eval.dataset=digits: a probe "
                        "dataset of another image size is resized to the training shape (eval.resize)")
    s.set_defaults(fn=_cmd_eval)
    s = sub.add_parser("bench", help="step time, images/s, peak memory per rule vs e2e-bp")
    s.add_argument("configs", nargs="*", help="cells to bench, each 'CONFIG[@POS] [key=value ...]' "
                   "(one argument; the overrides are this cell's own): POS an epoch of its schedule "
                   "(fmnist-gll-hinge@2 = its last stage) or 'all' (every stage of a greedy schedule); "
                   "default: one cell per rule family")
    s.add_argument("--batch", type=_count(2), action="append",
                   help="bench every cell at this batch size (repeatable: --batch 256 --batch 500); "
                   "ratios are per batch size")
    s.add_argument("--set", dest="overrides", action="append", default=[],
                   help="key=value override applied to every config")
    s.add_argument("--steps", type=_count(1), default=20, help="timed steps per config (≥ 1)")
    s.add_argument("--warmup", type=_count(0), default=3, help="untimed steps first (≥ 0)")
    s.add_argument("--out", default="results/bench.json", help="JSON output path")
    s.set_defaults(fn=_cmd_bench)
    s = sub.add_parser("compare", help="run a suite of configs and write the comparison table")
    s.add_argument("suite", help="suite name (biossl list) or a suite YAML")
    s.add_argument("--out", help="suite directory (default results/SUITE)")
    s.add_argument("--seeds", type=int, nargs="*", help="override the suite's seeds")
    s.set_defaults(fn=_cmd_compare)
    s = sub.add_parser("audit", help="conditions (i)-(iv) observed in one instrumented training step, with evidence",
                       epilog="what each check observes and its limits: docs/audit.md")
    s.add_argument("config", nargs="?", help="YAML path or recipe name (biossl list)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. schedule.name=greedy transport.name=urf")
    s.add_argument("--suite", help="audit every cell of this suite (biossl list) into one table instead")
    s.add_argument("--batch", type=_count(2), default=16, help="images in the audited step (≥ 2)")
    s.add_argument("--json", help="also write the audit as JSON to this path")
    s.set_defaults(fn=_cmd_audit)
    return p


def _train_argv(argv: list[str]) -> list[str]:
    """``train``'s arguments without --nproc (what each launched process gets)."""
    out, skip = [], False
    for a in argv[argv.index("train") + 1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _speaks() -> bool:
    """Whether this process prints: rank 0 of a launch, or a process whose launch environment
    is malformed (its error is its own: no other rank prints it)."""
    from biossl.distributed.launch import LaunchError, World
    try:
        return World.from_env().is_main
    except LaunchError:
        return True


def _say(text: str) -> None:
    """An error line, printed once per launch (by rank 0; every process of it stops alike)."""
    if _speaks():
        print(text, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from biossl.hugepages import large_tensors_on_huge_pages
    large_tensors_on_huge_pages()  # before the first tensor: torch reads it once
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        args.train_argv = _train_argv(argv)
    from biossl.checkpoint import CorruptCheckpoint
    from biossl.distributed.launch import PeerFailed
    from biossl.rundir import RunDirError
    from biossl.train import CheckpointWriteError, TrainingDiverged, TrainingInterrupted
    try:
        from biossl.data import DatasetError
    except ImportError:  # pragma: no cover
        DatasetError = RuntimeError
    try:
        return args.fn(args)
    except TrainingInterrupted as e:
        _say(f"biossl: {e}")
        return e.exit_code
    except PeerFailed as e:  # rank 0 printed it
        return e.exit_code
    except (ConfigError, DatasetError, TrainingDiverged, RunDirError, CorruptCheckpoint,
            CheckpointWriteError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        _say(f"biossl: error: {msg}")
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # permission denied, disk full outside a checkpoint: a message, not a traceback
        from biossl.checkpoint import is_disk_full
        what = "disk full" if is_disk_full(e) else (e.strerror or str(e))
        print(f"biossl: error: {what}: {e.filename or ''} ({e}); free space or choose a "
              f"writable location, then run the command again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
