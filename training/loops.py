"""The training loop of the backends that own one (transformers, the region classifier): :func:`fit` drives the
epochs (monitor, patience, best / last hooks, RNG state for resume); :func:`train_one_epoch` and
:func:`evaluate_loss` are the plain per-epoch functions (torchvision's detection engine style), on one device or
through an ``accelerate.Accelerator`` (DDP under ``torchrun`` / ``accelerate launch``, mixed precision, gradient
accumulation: the transformers backend)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from training.cli import ConfigError

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of silently corrupting the weights."""


def launcher_rank() -> tuple[int, int]:
    """``(rank, world size)`` that a launcher (``torchrun``, ``accelerate launch``, ``mpirun``) gave this process
    through the environment; ``(0, 1)`` without one. Read before any process group exists."""

    def env(*names: str, default: int) -> int:
        for name in names:
            if os.environ.get(name, "").strip().isdigit():
                return int(os.environ[name])
        return default

    rank = env("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK", default=0)
    world = env("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE", default=1)
    return rank, world


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    step_fn,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    max_steps: int | None = None,
    accelerator=None,
) -> dict[str, float]:
    """One pass over ``loader``. ``step_fn(model, batch, device) -> loss`` computes the loss of a batch.

    Without ``accelerator``: one optimizer step per batch, mixed precision on CUDA when ``scaler`` is given.
    With an ``accelerate.Accelerator`` (``model``, ``optimizer`` and ``loader`` from its ``prepare``): its mixed
    precision, gradient accumulation (an optimizer step every ``gradient_accumulation_steps`` batches, and at the
    end of the loader) and DDP gradient sync; each batch's loss is averaged over the processes, so every process
    logs, checks and stops on the same number. ``max_steps`` counts optimizer steps either way.

    Returns the mean loss over the batches and the number of optimizer steps taken.

    Raises:
        NonFiniteLossError: a batch's loss is NaN or infinite (on every process at once with an accelerator).
    """
    model.train()
    total, batches, steps = 0.0, 0, 0
    window: list[float] = []  # the losses of the batches of the current optimizer step
    use_amp = accelerator is None and scaler is not None and device.type == "cuda"
    if not use_amp:  # a disabled scaler passes the loss through and steps the optimizer as is
        scaler = torch.amp.GradScaler(enabled=False)
    main = accelerator is None or accelerator.is_main_process
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        with contextlib.nullcontext() if accelerator is None else accelerator.accumulate(model):
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss = step_fn(model, batch, device)
            detached = loss.detach().float()
            if accelerator is not None:  # the mean over the processes: the loss of the global batch
                detached = accelerator.reduce(detached, reduction="mean")
            value = float(detached)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss is {value} at step {steps}; lower the learning rate or check the data"
                )
            if accelerator is None:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
                stepped = True
            else:  # accelerate skips step / zero_grad between the sync points of an accumulation
                accelerator.backward(loss)
                stepped = accelerator.sync_gradients
                if stepped and grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        total += value
        batches += 1
        window.append(value)
        if stepped:
            steps += 1
            if main:  # per-step curve: `hydra.verbose=training.loops` shows it
                log.debug("step %d loss %.6f", steps, sum(window) / len(window))
            window.clear()
    return {"loss": total / max(batches, 1), "steps": float(steps)}


@torch.inference_mode()
def evaluate_loss(
    model: torch.nn.Module, loader: Iterable, device: torch.device, step_fn, accelerator=None
) -> float:
    """Mean loss over ``loader`` with the model in eval mode (the fallback monitor without an evaluator).

    With an ``accelerator`` (``loader`` from its ``prepare``, so a shard of the data on each process, the same
    number of batches on each): the mean over all processes, the same number on every one.
    """
    model.eval()
    total, n = 0.0, 0
    for batch in loader:
        total += float(step_fn(model, batch, device))
        n += 1
    if accelerator is not None:
        both = accelerator.reduce(torch.tensor([total, float(n)], device=accelerator.device), reduction="sum")
        total, n = float(both[0]), int(both[1])
    return total / max(n, 1)


@dataclass
class FitState:
    """Progress of one :func:`fit`: what ``resume`` restores (with :func:`rng_state`)."""

    epoch: int = 0
    steps: int = 0
    best: float | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)

    def saved(self) -> dict:
        """What a last checkpoint keeps (``FitState(**saved)`` restores it); the history stays in the run."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"}

    def improved(self, value: float, mode: str) -> bool:
        return self.best is None or (value > self.best if mode == "max" else value < self.best)


def rng_state(loader_gen: torch.Generator | None = None) -> dict:
    """Python, NumPy, torch and the loader's shuffling RNG: a resumed run continues the same random stream."""
    state = {"py_rng": random.getstate(), "np_rng": np.random.get_state(), "torch_rng": torch.get_rng_state()}
    if loader_gen is not None:
        state["loader_rng"] = loader_gen.get_state()
    return state


def set_rng_state(state: dict, loader_gen: torch.Generator | None = None) -> None:
    random.setstate(state["py_rng"])
    np.random.set_state(state["np_rng"])
    torch.set_rng_state(state["torch_rng"])
    if loader_gen is not None:
        loader_gen.set_state(state["loader_rng"])


def fit(
    train_epoch: Callable[[int | None], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    *,
    epochs: int,
    monitor: str,
    mode: str,
    patience: int,
    eval_every: int = 1,
    max_steps: int | None = None,
    on_best: Callable[[FitState], None] | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
    tracker=None,
    step0: int = 0,
    name: str = "train",
    state: FitState | None = None,
    verbose: bool = True,
) -> FitState:
    """Run epochs until ``epochs``, ``max_steps`` optimizer steps in total, or ``patience`` evaluations without
    an improvement of ``monitor`` (``mode`` max or min; ``patience`` 0: never stop early).

    ``train_epoch(steps_left)`` trains one epoch and returns ``{"loss", "steps", ...}`` (every other entry is
    logged); ``validate()`` returns the validation metrics, named as ``monitor`` is. ``on_best`` runs when the
    monitor improves (save or snapshot the weights), ``on_epoch_end`` after every epoch (save the last state,
    with :func:`rng_state`). The tracker's step is ``step0 + epoch``. ``state`` continues a resumed fit.
    ``verbose``: log each epoch's line (False on every process but the main one under a launcher).
    """
    st = state or FitState()
    for _ in range(st.epoch, epochs):
        left = None if max_steps is None else int(max_steps) - st.steps
        if left is not None and left <= 0:
            break
        stats = train_epoch(left)
        st.steps += int(stats["steps"])
        st.epoch += 1
        logs = {
            "train/loss": float(stats["loss"]),
            **{k: v for k, v in stats.items() if k not in ("loss", "steps")},
        }
        if st.epoch % eval_every == 0 or st.epoch == epochs:
            logs.update(validate())
            value = logs.get(monitor)
            if value is None:
                raise ConfigError(
                    f"train.monitor={monitor!r} is not a logged metric; available: {sorted(logs)}"
                )
            if st.improved(float(value), mode):
                st.best, st.bad_epochs = float(value), 0
                if on_best is not None:
                    on_best(st)
            else:
                st.bad_epochs += 1
        logs = {k: float(v) for k, v in logs.items()}
        st.history.append({"phase": name, "epoch": step0 + st.epoch, **logs})
        if tracker is not None:
            tracker.log_metrics(logs, step=step0 + st.epoch)
        if verbose:
            log.info("%s epoch %d/%d %s", name, st.epoch, epochs, {k: round(v, 4) for k, v in logs.items()})
        if on_epoch_end is not None:
            on_epoch_end(st)
        if patience and st.bad_epochs >= patience:
            if verbose:
                log.info("%s: early stop, %s did not improve for %d evaluations", name, monitor, patience)
            break
    return st
