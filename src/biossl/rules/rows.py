"""Running a stage over a batch's rows in parts: the maps of one part alive at a time.

Every stage of biossl's encoders (without batch statistics) maps each row independently,
so a batch's output is its parts' outputs side by side: frozen lower stages run one view
at a time, and a segment learning by autograd may run its rows in chunks
(``train.stage_chunks``, :func:`biossl.rules.transports.backprop.autograd_update`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from biossl.layout import memory_format


def row_chunks(start: int, stop: int, chunks: int) -> list[slice]:
    """Rows ``start:stop`` in ``chunks`` nearly equal consecutive slices (fewer when there
    are fewer rows than chunks; none when there are no rows)."""
    n = stop - start
    chunks = max(1, min(chunks, n))
    if n <= 0:
        return []
    bounds = [start + (n * i) // chunks for i in range(chunks + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def run_rows(fn: Callable[[slice], Tensor], parts: Sequence[slice], rows: int) -> Tensor:
    """``fn``'s outputs on ``parts`` of the rows (which cover ``0:rows``), written into one
    output: no list of parts and no ``torch.cat`` (which would hold the output twice)."""
    if len(parts) == 1:
        return fn(parts[0])
    out = None
    for p in parts:
        part = fn(p)
        if out is None:
            out = empty_like_rows(part, rows)
        out[p] = part
        del part
    return out


def empty_like_rows(part: Tensor, rows: int) -> Tensor:
    """An uninitialised tensor of ``rows`` rows shaped, typed and laid out like ``part``."""
    return torch.empty((rows, *part.shape[1:]), dtype=part.dtype, device=part.device,
                       memory_format=memory_format(part))
