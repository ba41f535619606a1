"""Back-propagation: the error crosses every layer through the forward weights Wᵀ.

With an end-to-end schedule this is the baseline; with a local schedule the error
crosses only the stage's own layers (and its head), as in Bio-SSL's GLL/RLL-BP.
"""
from __future__ import annotations

from biossl.rules.base import check_finite
from biossl.rules.transports.base import Transport, Update, run_segment


def autograd_update(rule, k, x, batch) -> Update:
    """The segment's loss, differentiated by autograd (whatever backward the layers define)."""
    with rule.autocast():
        h = run_segment(rule, k, x, batch)
        loss = rule.objectives[k](h, batch)
    check_finite(loss, rule.loss_name(k), rule.replicas)
    loss.backward()
    return Update(h.detach(), loss.item())


class Backprop(Transport):
    """Errors travel through the transposed forward weights (weight transport)."""

    transposes_between_stages = True
    transposes_in_head = True

    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        return autograd_update(rule, k, x, batch)
