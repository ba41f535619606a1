"""Plot the training loss of several runs (their metrics.jsonl) on one figure.

    python scripts/loss_curves.py runs/search/* --out docs/fmnist-long-search.png

Each run is drawn against SSL images seen (step × batch size, from its config.yaml); runs
whose losses live on different scales (NT-Xent vs hinge) get one panel per objective.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def load_curve(run: Path) -> tuple[str, list[float], list[float]]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    bs = cfg["train"]["batch_size"]
    return cfg["objective"]["name"], [r["step"] * bs for r in rows], [r["loss"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smooth", type=int, default=5, help="moving-average window (logged points)")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = {}
    for run in args.runs:
        if (run / "metrics.jsonl").is_file() and (run / "config.yaml").is_file():
            obj, x, y = load_curve(run)
            curves.setdefault(obj, []).append((run.name, x, y))
    if not curves:
        raise SystemExit("no run directory with metrics.jsonl and config.yaml among the arguments")
    fig, axes = plt.subplots(1, len(curves), figsize=(7 * len(curves), 4.5), squeeze=False)
    for ax, (obj, runs) in zip(axes[0], sorted(curves.items())):
        for name, x, y in runs:
            w = max(1, args.smooth)
            ys = [sum(y[max(0, i - w + 1):i + 1]) / len(y[max(0, i - w + 1):i + 1]) for i in range(len(y))]
            ax.plot(x, ys, label=name, lw=1.4)
        ax.set_xlabel("SSL images seen")
        ax.set_ylabel(f"{obj} loss (moving average of {args.smooth} logged steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
