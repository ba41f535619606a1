"""Back-propagation: the error crosses every layer through the forward weights Wᵀ.

With an end-to-end schedule this is the baseline; with a local schedule the error
crosses only the stage's own layers (and its head), as in Bio-SSL's GLL/RLL-BP.
"""
from __future__ import annotations

import torch

from biossl.rules.base import check_finite
from biossl.rules.rows import row_chunks, run_rows
from biossl.rules.transports.base import Transport, Update, run_segment


def autograd_update(rule, k, x, batch) -> Update:
    """The segment's loss, differentiated by autograd (whatever backward the layers define);
    over the rows in ``rule.row_chunks`` chunks when that is more than one."""
    if rule.row_chunks > 1:
        return chunked_update(rule, k, x, batch, rule.row_chunks)
    with rule.autocast():
        h = run_segment(rule, k, x, batch)
        loss = rule.objectives[k](h, batch)
    check_finite(loss, rule.loss_name(k), rule.replicas)
    loss.backward()
    return Update(h.detach(), loss.item())


def chunked_update(rule, k, x, batch, chunks: int) -> Update:
    """:func:`autograd_update`'s gradients with one chunk of the segment's and its head's
    graph alive at a time. The objective couples rows only after its row-wise start z =
    obj.rowwise(h) (the head; Objective.rowwise): the loss on z (a leaf, from a pass without graph)
    and its backward give dL/dz and the gradients of what couples rows; every row of the
    segment and head is independent of the others, so each chunk's forward again, backward
    with its rows of dL/dz, adds its share of their gradients (one more forward of the
    segment and head). A gradient-blocked objective's first view learns nothing in the
    segment (run_segment gives it no graph; its z rows are detached): those rows get no chunk."""
    span, obj = rule.spans[k], rule.objectives[k]

    def run(rows: slice):
        return rule.encoder.run(x[rows], span.start, span.stop)

    n = x.shape[0]
    parts = row_chunks(0, n, chunks)
    with torch.no_grad(), rule.autocast():
        h = run_rows(run, parts, n)  # the segment's output: the update's (next stage's input)
        z = run_rows(lambda rows: obj.rowwise(h[rows]), parts, n)
    z.requires_grad_()
    with rule.autocast():
        loss = obj.coupled(z, batch)
    check_finite(loss, rule.loss_name(k), rule.replicas)
    loss.backward()
    grad, value = z.grad, loss.item()
    del loss, z
    blocked = batch.first_view_rows() if obj.grad_block else None
    for rows in row_chunks(0 if blocked is None else blocked.stop, n, chunks):
        with rule.autocast():
            part = obj.rowwise(run(rows))
        part.backward(grad[rows])
        del part
    return Update(h, value)


class Backprop(Transport):
    """Errors travel through the transposed forward weights (weight transport)."""

    transposes_between_stages = True
    transposes_in_head = True
    row_chunked = True

    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        return autograd_update(rule, k, x, batch)
