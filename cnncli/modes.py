"""Running a network in eval mode for a while (dropout off, batch norm on its running
statistics), its mode restored afterwards."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def eval_mode(net):
    """``with eval_mode(net):`` runs the block with ``net`` in eval mode, then puts it back in
    train mode if it was there (also when the block raises)."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        if was_training:
            net.train()
