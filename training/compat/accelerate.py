"""accelerate: every private name of it the project uses, in one place (tests/test_compat.py checks each against
the installed release)."""

from __future__ import annotations


def reset_state(partial: bool) -> None:
    """Clear accelerate's process-wide state, as accelerate's own tests do between runs: an ``Accelerator`` refuses a
    change of device or precision once its state exists, so a new run (a sweep's next trial, a test) starts from a
    clean one. ``partial``: the ``PartialState`` too (its process group; keep it under a launcher, whose process
    group outlives a run). Private: ``AcceleratorState._reset_state(reset_partial_state)``,
    ``GradientState._reset_state()``; accelerate has no public reset."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=partial)
    GradientState._reset_state()
