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
    """:func:`autograd_update`'s gradients with one chunk of the segment's graph alive at a
    time. The objective couples rows only through the segment's output h (negatives, …): its
    loss and backward on h (a leaf) give the head's gradients and dL/dh; the segment's rows
    are independent, so each chunk's forward again, backward with its rows of dL/dh, adds its
    share of the segment's gradients (one more forward of the segment). A gradient-blocked
    objective's first view learns nothing in the segment (run_segment gives it no graph):
    its rows get no chunk."""
    span = rule.spans[k]

    def run(rows: slice):
        return rule.encoder.run(x[rows], span.start, span.stop)

    n = x.shape[0]
    with torch.no_grad(), rule.autocast():
        h = run_rows(run, row_chunks(0, n, chunks), n)
    h.requires_grad_()
    with rule.autocast():
        loss = rule.objectives[k](h, batch)
    check_finite(loss, rule.loss_name(k), rule.replicas)
    loss.backward()
    grad, h.grad, value = h.grad, None, loss.item()
    del loss
    blocked = batch.first_view_rows() if rule.objectives[k].grad_block else None
    for rows in row_chunks(0 if blocked is None else blocked.stop, n, chunks):
        with rule.autocast():
            part = run(rows)
        part.backward(grad[rows])
        del part
    return Update(h.detach(), value)


class Backprop(Transport):
    """Errors travel through the transposed forward weights (weight transport)."""

    transposes_between_stages = True
    transposes_in_head = True
    row_chunked = True

    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        return autograd_update(rule, k, x, batch)
