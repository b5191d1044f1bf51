"""Checkpoints from others are untrusted: loading one must never run code.

A PyTorch ``.pt`` is a pickle, and unpickling can call any function the file names (``os.system``...). Every
checkpoint the framework reads goes through here:

- :func:`load_weights`: ``torch.load(weights_only=True)`` (tensors, plain containers and a few numpy data types
  only), with one-line errors for empty, text, truncated or foreign files;
- :func:`check_ultralytics_checkpoint`: ultralytics pickles whole modules, so its checkpoints cannot load with
  plain ``weights_only=True``. Ultralytics (>= 8.4.164, pyproject.toml) has its own restricted loader (``ULTRALYTICS_SAFE_LOAD``:
  ``weights_only=True`` plus an allow-list of its model classes), which every ultralytics operation that reads a
  file runs under (``training.compat.ultralytics.safe_load``); before ultralytics sees a file we refuse any
  checkpoint that names a global outside model classes and plain data, naming the offending globals in one line.

Formats that cannot carry code need none of this: transformers run folders load ``model.safetensors``; exports
are ONNX / OpenVINO IR / TensorRT engines.
"""

from __future__ import annotations

import importlib
import pickle
import struct
import zipfile
from pathlib import Path

from training.cli import DataError, first_line

# Globals a genuine ultralytics checkpoint names (torch.serialization.get_unsafe_globals_in_checkpoint lists
# those outside torch's own safe set): model classes, plus the data types ultralytics' loader maps itself.
# ultralytics' restricted unpickler checks each again (model classes must be nn.Module subclasses; its
# `builtins.getattr` stand-in only reaches attributes of modules).
_MODEL_PREFIXES = (
    "torch.nn.modules.",
    "ultralytics.nn.modules.",
    "ultralytics.nn.tasks.",
    "ultralytics.utils.loss.",
    "ultralytics.utils.tal.",
    "torchvision.transforms.",
    "numpy.dtypes.",
)
_DATA_GLOBALS = frozenset(
    {
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "ultralytics.utils.IterableSimpleNamespace",
        "ultralytics.yolo.utils.IterableSimpleNamespace",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath",
        "builtins.getattr",
    }
)
# numpy arrays and scalars in plain state files (RNG states, metrics): data, reconstructed without calls into
# user code. torch documents this set for weights_only loads of numpy content.
_NUMPY_DATA = (
    ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"),
    ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"),
)


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, not a {what}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (since torch 1.6); the legacy format is a raw pickle (protocol 2: 0x80 0x02)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise DataError(f"{path}: not a PyTorch {what} (neither a zip archive nor a pickle)")
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: truncated or corrupted {what} (broken zip archive)")


def checkpoint_globals(path: str | Path) -> list[str]:
    """Globals (``module.name``) the checkpoint's pickle refers to beyond torch's own safe set."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except ValueError:  # legacy (non-zip) format: the weights_only unpickler still guards the load
        return []
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: truncated or corrupted checkpoint ({e.__class__.__name__})") from None


def names_ultralytics_classes(path: str | Path) -> bool:
    """Whether the checkpoint's pickle names ultralytics classes (an ultralytics checkpoint), read without
    unpickling. Not from :func:`checkpoint_globals`: ultralytics registers the classes it loaded as safe for the
    whole process, and torch's scan then stops listing them."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            record = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            if record is None:
                raise DataError(f"{path}: not a PyTorch checkpoint (no data.pkl in the archive)")
            data = z.read(record)
    except zipfile.BadZipFile:
        return False  # legacy format: ultralytics never writes it
    from training.compat.torch import globals_in_pickle

    try:
        names = globals_in_pickle(data)
    except Exception as e:  # a damaged pickle stream
        raise DataError(f"{path}: truncated or corrupted checkpoint ({e.__class__.__name__})") from None
    if names is None:  # a torch without the scanner: the class names are plain strings in a protocol-2 pickle
        return b"\nultralytics." in data or b"cultralytics." in data
    return any(g.startswith("ultralytics.") for g in names)


class UnsafeCheckpoint(DataError):
    """A checkpoint whose pickle names globals that no model needs: never loaded, never repaired."""


def _refuse(path: Path, bad: list[str]) -> UnsafeCheckpoint:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return UnsafeCheckpoint(
        f"{path}: refused to load: it names {shown}, which no model checkpoint needs "
        "(unpickling it could run code; only load checkpoints you trust the origin of)"
    )


def is_model_global(name: str) -> bool:
    """A model class (or a data type) of torch / ultralytics: never a function such as a hook registrar."""
    if name in _DATA_GLOBALS:
        return True
    if not name.startswith(_MODEL_PREFIXES):
        return False
    module, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:  # a class of another ultralytics release: its own loader maps or refuses it
        return module.startswith("ultralytics.")
    return isinstance(obj, type)


def check_ultralytics_checkpoint(path: str | Path) -> Path:
    """Refuse a file that is not a PyTorch checkpoint or names a global that is not a model class / plain data.

    A legacy raw pickle (not a zip archive) is refused too: ultralytics never writes one, and torch cannot list
    its globals without running it."""
    path = Path(path)
    _check_file(path, "checkpoint")
    if not zipfile.is_zipfile(path):
        raise UnsafeCheckpoint(
            f"{path}: refused to load: a legacy raw pickle, which ultralytics never writes and whose globals cannot "
            "be listed without unpickling it (re-save it with torch.save if you trust its origin)"
        )
    bad = [g for g in checkpoint_globals(path) if not is_model_global(g)]
    if bad:
        raise _refuse(path, bad)
    return path


def vet_ultralytics_checkpoint(path: str | Path) -> Path:
    """:func:`check_ultralytics_checkpoint`, then a trial load through ultralytics' restricted loader: for a file
    that ultralytics will read without us in between (a resumed run's own checkpoints). Its ``getattr`` stand-in
    refuses what the scan of globals alone lets through (``getattr`` on a model class reaches functions)."""
    from training.compat.ultralytics import trial_load

    path = check_ultralytics_checkpoint(path)
    try:
        trial_load(path)
    except DataError:  # an ultralytics without the restricted loader
        raise
    except Exception as e:  # the restricted unpickler's refusal, whatever its class
        raise UnsafeCheckpoint(
            f"{path}: refused to load: ultralytics' restricted loader rejects it ({first_line(e, 160)})"
        ) from None
    return path


def _numpy_globals() -> list:
    out = []
    for names in _NUMPY_DATA:
        for name in names:
            module, _, attr = name.rpartition(".")
            try:
                out.append((getattr(importlib.import_module(module), attr), name))
            except (ImportError, AttributeError):
                continue
    import numpy as np

    out += [np.ndarray, np.dtype]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "uint32", "uint8", "bool")]
    return out


def load_weights(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)`` with numpy data allowed; one line naming the file on any failure."""
    import torch

    path = Path(path)
    _check_file(path, what)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        bad = [g for g in checkpoint_globals(path) if g not in {n for ns in _NUMPY_DATA for n in ns}]
        if bad:
            raise _refuse(path, bad) from None
        raise DataError(f"{path}: not a loadable {what} ({first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f"{path}: truncated or corrupted {what} ({e.__class__.__name__}: {first_line(e)})"
        ) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, struct.error) as e:
        # a malformed pickle stream (an empty stack, a bad opcode argument): torch's unpickler lets these through
        raise DataError(f"{path}: not a loadable {what} ({e.__class__.__name__}: {first_line(e)})") from None
