"""transformers: every patch of it the project applies, in one place (tests/test_compat.py checks each against
the installed release; pyproject.toml bounds transformers to the releases those tests cover)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

# the source lines of ``ImageLoss.forward`` that make the bug box_count_summed works around
BOX_COUNT_MEAN = ("num_boxes = reduce(num_boxes)", "num_boxes / world_size")


def _averages_box_count_twice(losses) -> bool:
    try:
        source = inspect.getsource(losses.ImageLoss.forward)
    except (AttributeError, OSError, TypeError):
        return False
    return all(line in source for line in BOX_COUNT_MEAN)


@contextlib.contextmanager
def box_count_summed(processes: int) -> Iterator[None]:
    """Patch, within the context: transformers' DETR-family losses (``ImageLoss.forward`` in
    transformers/loss/loss_for_object_detection.py: DETR, Conditional-DETR, YOLOS) average the box count over the
    processes with accelerate's ``reduce``, whose default is the mean, and then divide by the number of processes
    again: under N processes the box losses of a batch with more than N boxes come out up to N times too large.
    The original DETR sums, then divides; within this context the loss module's ``reduce`` sums. Applied only under
    several processes and only to the source that has that pattern (:data:`BOX_COUNT_MEAN`), so a fixed
    transformers is left alone (and tests/test_compat.py then says the patch can go)."""
    try:
        from transformers.loss import loss_for_object_detection as losses
    except ImportError:
        losses = None
    if processes < 2 or losses is None or not _averages_box_count_twice(losses):
        yield
        return
    mean = losses.reduce
    losses.reduce = functools.partial(mean, reduction="sum")
    try:
        yield
    finally:
        losses.reduce = mean
