"""Facts about the machine a run is on: the CPU's name and instruction-set flags (/proc/cpuinfo), and the torch
device a ``device`` setting means."""

from __future__ import annotations

import torch


def cpuinfo(key: str) -> str | None:
    """The first ``key`` line of /proc/cpuinfo (Linux), None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags as lscpu names them (/proc/cpuinfo ``flags``); empty where unknown."""
    return (cpuinfo("flags") or "").split()


def resolve_device(spec) -> torch.device:
    """A ``device`` setting as torch reads it: null, "" or "auto" -> CUDA when there is one, else the CPU; a GPU
    index (``0``) -> ``cuda:0``; anything else (``cpu``, ``cuda:1``, ``mps``) as is."""
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{spec}" if str(spec).isdigit() else str(spec))
