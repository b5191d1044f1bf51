"""Two plain loop functions for backends that own their training loop (torchvision's detection engine style)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of silently corrupting the weights."""


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    step_fn,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader``. ``step_fn(model, batch, device) -> loss`` computes the loss of a batch.

    Returns the mean loss and the number of optimizer steps taken.
    """
    model.train()
    total, steps = 0.0, 0
    use_amp = scaler is not None and device.type == "cuda"
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss = step_fn(model, batch, device)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at step {steps}; lower the learning rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if use_amp:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += value
        steps += 1
    return {"loss": total / max(steps, 1), "steps": float(steps)}


@torch.inference_mode()
def evaluate_loss(model: torch.nn.Module, loader: Iterable, device: torch.device, step_fn) -> float:
    """Mean loss over ``loader`` with the model in eval mode (the fallback monitor without an evaluator)."""
    model.eval()
    total, n = 0.0, 0
    for batch in loader:
        total += float(step_fn(model, batch, device))
        n += 1
    return total / max(n, 1)
