"""The one-process batch of the replicas' shards, for tests that compare N processes with one
(docs/distributed.md, "The global batch")."""
from __future__ import annotations

import torch

from biossl.views.batch import ViewBatch


def global_batch(shards: list[ViewBatch]) -> ViewBatch:
    """The one-process batch of the replicas' shards (docs/distributed.md, "The global batch")."""
    first = shards[0]
    if first.kind == "pairs":
        x = torch.cat([b.x[:b.n] for b in shards] + [b.x[b.n:] for b in shards])
    else:
        x = torch.cat([b.x for b in shards])
    return ViewBatch(x, sum(b.n for b in shards), first.kind, first.grid)
