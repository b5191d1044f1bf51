"""The latency protocol (DESIGN.md): batch 1, fixed input size, >= 10 warm-up runs, then >= 100 timed runs
or >= 10 s (whichever is longer); p50 / p90 / p99 / mean / std in milliseconds; model-only and end-to-end
(pre + inference + post) separately; the hardware, threads and library versions recorded beside them."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable

import numpy as np


def measure(
    fn: Callable[[], object], warmup: int = 10, min_runs: int = 100, min_seconds: float = 10.0
) -> dict[str, float]:
    """Time ``fn`` per the protocol; milliseconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    a = np.asarray(times)
    return {
        **{f"p{q}_ms": float(v) for q, v in zip((50, 90, 99), np.percentile(a, [50, 90, 99]), strict=True)},
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "runs": float(a.size),
        "warmup": float(warmup),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str | int | None]:
    """Hardware and versions that a latency number is meaningless without."""
    import torch

    versions = {}
    for pkg in ("torch", "torchvision", "ultralytics", "transformers", "onnxruntime", "openvino", "tensorrt"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        **{f"version/{k}": v for k, v in versions.items()},
    }


def protocol(node) -> dict:
    """:func:`benchmark_detector`'s protocol keywords from a config node (``latency:`` or the export benchmark's
    root): ``warmup``, ``min_runs``, ``min_seconds`` and ``threads`` (unset: torch's own)."""
    return {
        "warmup": int(node.warmup),
        "min_runs": int(node.min_runs),
        "min_seconds": float(node.min_seconds),
        "threads": node.get("threads"),
    }


def benchmark_detector(
    detector,
    image: np.ndarray,
    imgsz: int,
    conf: float,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    threads: int | None = None,
) -> dict[str, float]:
    """Model-only (``detector.benchmark_forward``) and end-to-end (``detector.predict`` on an in-memory RGB page).

    On CUDA the model-only closure synchronises after each run (:meth:`Backend._timed`); end-to-end needs no
    extra synchronisation: ``predict`` copies the outputs to the host, which waits for the GPU.

    ``threads`` is re-applied right before each measurement: ultralytics' device selection sets torch's thread
    count to cores - 1 as a side effect whenever a model is loaded, which would otherwise leak into every model
    timed after it.
    """
    import torch

    forward = detector.benchmark_forward(imgsz)
    if threads:
        torch.set_num_threads(int(threads))
    model_only = measure(forward, warmup, min_runs, min_seconds)
    detector.predict([image], conf=conf, imgsz=imgsz)  # any per-call setup happens before the thread reset
    if threads:
        torch.set_num_threads(int(threads))
    e2e = measure(lambda: detector.predict([image], conf=conf, imgsz=imgsz), warmup, min_runs, min_seconds)
    out = {f"model/{k}": v for k, v in model_only.items()}
    out.update({f"e2e/{k}": v for k, v in e2e.items()})
    out["threads"] = float(torch.get_num_threads())
    return out
