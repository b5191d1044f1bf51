"""Several workers on one job (sweep trials, model-selection models): which worker this is, which GPU it gets,
and which piece of work it claims.

A worker is one process started by the user (or by SLURM, torchrun, hydra-submitit...): ``SIGDET_WORKER=k``
numbers it (SLURM's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_PROCID`` are read when it is unset). Launching stays the
scheduler's job; this module only makes N started copies of one command cooperate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_VARS = ("SIGDET_WORKER", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID")


def worker_index() -> int:
    """This worker's number: the first of ``WORKER_VARS`` that is set, else 0."""
    for var in WORKER_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def pin_device(devices: Sequence | None, worker: int) -> str | None:
    """Pin this process to ``devices[worker % len(devices)]`` through ``CUDA_VISIBLE_DEVICES`` (so that every
    library, and every training subprocess, sees that GPU as ``cuda:0``); None or empty ``devices``: unchanged.

    Must run before CUDA is initialised in this process (CUDA reads the variable once).
    """
    if not devices:
        return None
    device = str(list(devices)[worker % len(devices)])
    import torch

    if torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != device:
        log.warning(
            "CUDA was initialised before worker %d was pinned to GPU %s: the pin may not apply",
            worker,
            device,
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    log.info("worker %d: GPU %s (CUDA_VISIBLE_DEVICES)", worker, device)
    return device


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: is it there?
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def claim(folder: Path) -> bool:
    """Take ``folder``'s piece of work for this process: create ``folder/claim.json`` atomically (host, pid).
    False when another live worker holds it. A claim left by a dead process on this host is taken over; one from
    another host is trusted (delete its claim.json to hand the work to another worker)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "claim.json"
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = {}  # torn by a kill mid-write: trusted like another host's (delete it to free the work)
            if not isinstance(held, dict) or not isinstance(held.get("pid"), int):
                held = {}  # not written by a worker: trusted like another host's, as above
            if held == me:
                return True
            if held.get("host") == me["host"] and not _alive(held["pid"]):
                log.warning("%s: taking over the claim of dead worker pid %s", folder, held.get("pid"))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return True
    return False


def release(folder: Path) -> None:
    """Give ``folder``'s claim back (its work is done or failed)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / "claim.json").unlink()
