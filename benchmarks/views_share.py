"""How much of a training step the views cost.

Times, in one run on the same batch, (a) a view recipe making 2N views from N uint8
images and (b) one back-propagation step on those 2N views: a 3-stage conv net
(32/64/128 channels, 3×3, ReLU, max-pool 2; 28 → 14 → 7 → 3) + Linear head to 64,
NT-Xent loss, Adam. The net is built inline so the benchmark needs only the views
package. Prints images/s of each and the views' share of a step (target <= 10 %).

    PYTHONPATH=src python benchmarks/views_share.py [--recipe deform] [--batch 256]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from biossl.registry import VIEWS
import biossl.views  # noqa: F401  (registers the recipes)


def small_convnet(in_ch: int = 1) -> nn.Module:
    layers, c = [], in_ch
    for out in (32, 64, 128):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)]
        c = out
    # lazy: the flattened width depends on --shape (128·3·3 at 28×28)
    return nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(64, bias=False))


def ntxent(z: torch.Tensor, n: int, tau: float = 0.5) -> torch.Tensor:
    """SimCLR loss for z (2n, D): row i's positive is row (i + n) mod 2n."""
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / tau
    sim.fill_diagonal_(float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(sim, target)


def _clock(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timed_pair(fa, fb, iters: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Alternate fa and fb so both see the same machine load (the cores may be shared)."""
    ta, tb = [], []
    for _ in range(iters):
        ta.append(_clock(fa, device))
        tb.append(_clock(fb, device))
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="deform", choices=VIEWS.names())
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"),
                    help="image shape (default: Fashion-MNIST's 1 28 28)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    shape = tuple(a.shape)
    # stand-in for Fashion-MNIST: random uint8 images (view cost does not depend on content)
    x = torch.randint(0, 256, (a.batch, *shape), dtype=torch.uint8, device=dev)
    recipe = VIEWS.build(a.recipe, None, shape)
    g = torch.Generator(device=dev).manual_seed(0)
    net = small_convnet(shape[0]).to(dev)
    views = recipe(x, g)
    net(views.x)  # materialise the lazy head before the optimizer sees its parameters
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def make_views():
        nonlocal views
        views = recipe(x, g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ntxent(net(views.x), views.n)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        make_views()
        step()
    tvs, tss = timed_pair(make_views, step, a.iters, dev)
    print(f"device {dev} threads {torch.get_num_threads()} recipe {a.recipe} batch {a.batch} "
          f"(2×{a.batch} views of {shape}), {a.iters} alternating iterations")
    for label, ts in (("views", tvs), ("BP step", tss)):
        med, best = statistics.median(ts), min(ts)
        print(f"{label:8s} median {med * 1e3:8.2f} ms  min {best * 1e3:8.2f} ms  "
              f"{a.batch / med:8.0f} images/s (median)")
    shares = [v / (v + t) for v, t in zip(tvs, tss)]
    print(f"views share of a step (views + BP): median {100 * statistics.median(shares):.1f} %, "
          f"of summed time {100 * sum(tvs) / (sum(tvs) + sum(tss)):.1f} %, "
          f"of min times {100 * min(tvs) / (min(tvs) + min(tss)):.1f} %  (target <= 10 %)")


if __name__ == "__main__":
    main()
