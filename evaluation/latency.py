"""The latency protocol (every latency table uses it): batch 1, fixed input size, >= 10 warm-up runs, then >= 100 timed runs
or >= 10 s (whichever is longer); p50 / p90 / p99 / mean / std in milliseconds; model-only and end-to-end
(pre + inference + post) separately; the hardware, threads and library versions recorded beside them."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from training.hardware import cpu_flags
from training.hardware import cpuinfo as _cpuinfo


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


def physical_cores() -> int:
    """Physical cores this process may run on: the CPUs of its affinity mask, hyper-threads of one core counted
    once (they share its vector and AMX units), from /proc/cpuinfo; ``os.cpu_count()`` where that is missing."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores, block = set(), {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in [*f, "\n"]:
                if line.strip():
                    key, _, value = line.partition(":")
                    block[key.strip()] = value.strip()
                    continue
                if "processor" in block and (allowed is None or int(block["processor"]) in allowed):
                    cores.add((block.get("physical id"), block.get("core id", block["processor"])))
                block = {}
    except (OSError, ValueError):
        pass
    return len(cores) or os.cpu_count() or 1


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


#: the vector / matrix extensions that decide which kernels a CPU runtime can use (lscpu's flag names)
ISA_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

#: dense multiply-add operations (2 per multiply-add) per cycle and core, by precision and the best unit the
#: CPU has: AMX's tile unit (TDPBF16PS: 16x32x16 BF16 multiply-adds per 16 cycles; TDPBSSD: 16x64x16 INT8);
#: AVX-512 with two FMA ports (16 FP32 lanes x 2 ports; BF16 dot products 2 per lane; VNNI 4 INT8 per lane);
#: AVX2 with two FMA ports (8 FP32 lanes; AVX-VNNI 4 INT8 per lane; plain AVX2 INT8 via vpmaddubsw, 2 per lane).
PEAK_OPS_PER_CYCLE = (
    ("amx_bf16", "bf16", 1024),
    ("amx_int8", "int8", 2048),
    ("avx512_bf16", "bf16", 128),
    ("avx512_vnni", "int8", 256),
    ("avx512f", "fp32", 64),
    ("avx_vnni", "int8", 128),
    ("avx2", "int8", 64),
    ("avx2", "fp32", 32),
)


def cpu_peak(
    precision: str, flags: list[str] | None = None, threads: int | None = None
) -> tuple[float | None, str]:
    """The CPU's peak in operations per second for ``precision`` (``fp32`` / ``bf16`` / ``int8``), with how
    it was derived: physical cores (:func:`physical_cores`; at most ``threads`` when the runtimes were limited to
    that many, since the other cores' units sat idle) x clock x the operations per cycle of the best unit the
    flags list (:data:`PEAK_OPS_PER_CYCLE`). The clock is ``cpu MHz`` of /proc/cpuinfo: what a VM reports
    (its base clock here), the current clock on bare metal, so the figure is an estimate. None where unknown."""
    flags = flags if flags is not None else cpu_flags()
    mhz = float(_cpuinfo("cpu MHz") or 0)
    cores = min(physical_cores(), int(threads)) if threads else physical_cores()
    for flag, prec, ops in PEAK_OPS_PER_CYCLE:
        if prec == precision and flag in flags and mhz:
            peak = cores * mhz * 1e6 * ops
            how = f"{cores} cores x {mhz:.0f} MHz x {ops} {precision} ops/cycle ({flag})"
            return peak, how
    return None, f"no {precision} unit known for this CPU"


def environment() -> dict[str, str | int | None]:
    """Hardware and versions that a latency number is meaningless without."""
    import torch

    versions = {}
    for pkg in ("torch", "torchvision", "ultralytics", "transformers", "onnxruntime", "openvino", "tensorrt"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    flags = cpu_flags()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_mhz": _cpuinfo("cpu MHz"),
        "cpu_isa": " ".join(f for f in ISA_FLAGS if f in flags),
        # OpenVINO's CPU kernels (oneDNN) stop at this instruction set when it is set, e.g. AVX2 to see what an
        # AVX2-only server would get; ONNX Runtime and PyTorch ignore it
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
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
