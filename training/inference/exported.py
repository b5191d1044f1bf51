"""An exported model behind the part of the Detector contract the evaluator and the latency protocol use
(``predict``, ``class_names``, ``checkpoint``, ``benchmark_forward``), for any runtime."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.backends.base import EVAL_CONF, Detections, ImageInput
from training.cli import DataError, UserError
from training.inference.families import Family
from training.inference.runtimes import OpenVINORunner, OrtRunner, Runner, TensorRTRunner, TorchRunner

META = "sigdet_export.json"
SUFFIXES = {".onnx": "onnx", ".xml": "openvino", ".engine": "tensorrt"}


class ExportedModel:
    """An exported model through one runtime: a :class:`~training.backends.base.Predictor` (detectors) and the
    classifier's ``predict_proba``."""

    def __init__(self, family: Family, runner: Runner, checkpoint: str, fmt: str):
        self.family, self.runner, self.checkpoint, self.format = family, runner, Path(checkpoint), fmt
        self.class_names = family.class_names
        self.device = runner.device
        #: the page :meth:`benchmark_forward` letterboxes (None: a blank page of the input size); the latency
        #: benchmark sets its page, so that a dynamic input is timed model-only at the shape it is end to end
        self.timing_page: np.ndarray | None = None

    @property
    def imgsz(self) -> int:
        return self.family.imgsz

    def predict(
        self, images: Sequence[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        """Detections per image (detectors) in the original frame; ``imgsz`` is fixed by the export."""
        if imgsz and int(imgsz) != self.family.imgsz and self.format != "pytorch":
            raise UserError(f"{self.checkpoint}: exported at imgsz={self.family.imgsz}, asked for {imgsz}")
        return [self.family.decode(self.runner(feeds), ctx, conf) for feeds, ctx in map(self.feeds, images)]

    def feeds(self, image) -> tuple[dict[str, np.ndarray], tuple]:
        """One page's inputs for this runner: the uint8 page where the graph does the conversion itself."""
        return self.family.feeds_u8(image) if self.runner.u8_input else self.family.feeds(image)

    def predict_proba(self, crops: list, batch: int = 1) -> np.ndarray:
        """Class probabilities (classifier), one crop at a time unless the export has a dynamic batch."""
        rows = [self.family.decode(self.runner(self.feeds(c)[0]), ()) for c in crops]
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)))

    def benchmark_forward(self, imgsz: int | None = None):
        """The runtime alone on one preprocessed page (latency protocol, model-only): a GPU runtime's
        ``timed`` binds the inputs on the device once, so no host-device copy is timed."""
        page = self.timing_page
        feeds, _ = self.feeds(np.full((*self.family.input_hw, 3), 255, np.uint8) if page is None else page)
        return self.runner.timed(feeds)


def read_meta(path: Path) -> tuple[dict, dict | None]:
    """The export manifest next to (or one folder above) an exported file, and that file's entry in it."""
    path = Path(path)
    for d in (path.parent, path.parent.parent):
        if (d / META).is_file():
            meta = load_meta(d / META)
            rel = str(path.resolve().relative_to(d.resolve()))
            entry = next((a for a in meta.get("artifacts", []) if a.get("path") == rel), None)
            return meta, entry
    raise UserError(
        f"{path}: no {META} beside it; export with `python -m export` (it records the preprocessing)"
    )


def load_meta(path: Path) -> dict:
    """``sigdet_export.json``, checked: one line naming the file when it is not an export manifest."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a valid export manifest ({e.__class__.__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a valid export manifest (expected a JSON object)")
    missing = [k for k in ("kind", "imgsz", "class_names", "input_names", "output_names") if k not in meta]
    if missing:
        raise DataError(f"{path}: not a valid export manifest (missing {missing})")
    bad = _malformed(meta)
    if bad:
        raise DataError(f"{path}: not a valid export manifest ({bad})")
    return meta


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _malformed(meta: dict) -> str | None:
    """The first entry of a manifest that its readers could not use, said as ``key: what is wrong`` (a manifest
    comes with an export folder from others: every reader may then index it without a check of its own)."""
    imgsz = meta["imgsz"]
    checks = [
        ("kind", isinstance(meta["kind"], str), "a backend name"),
        ("imgsz", isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0, "a positive integer"),
        *(
            (k, _is_str_list(meta[k]), "a list of names")
            for k in ("class_names", "input_names", "output_names")
        ),
        ("options", isinstance(meta.get("options") or {}, dict), "an object"),
        ("source", isinstance(meta.get("source", ""), str), "a path"),
        ("artifacts", isinstance(meta.get("artifacts", []), list), "a list"),
    ]
    for key, ok, want in checks:
        if not ok:
            return f"{key}: {meta.get(key)!r} is not {want}"
    for i, a in enumerate(meta.get("artifacts", [])):
        if not isinstance(a, dict) or not isinstance(a.get("path", ""), str):
            return f"artifacts[{i}]: not an object with a path"
    choice = meta.get("cpu_choice")
    if choice is not None:
        rel = choice.get("path") if isinstance(choice, dict) else None
        if not isinstance(rel, str) or Path(rel).suffix not in SUFFIXES or not _inside(rel):
            return f"cpu_choice: {choice!r} does not name an exported file in the folder ({list(SUFFIXES)})"
    return None


def _inside(rel: str) -> bool:
    """A relative path that stays in its folder."""
    p = Path(rel)
    return not p.is_absolute() and ".." not in p.parts


def is_exported(path: str | Path) -> bool:
    """An exported file, or an export folder (its manifest's ``cpu_choice`` is what runs)."""
    path = Path(path)
    return path.suffix in SUFFIXES or (path.is_dir() and (path / META).is_file())


def load_exported(
    path: str | Path, precision: str | None = None, threads: int | None = None
) -> ExportedModel:
    """Load an ``.onnx`` (ONNX Runtime), ``.xml`` (OpenVINO; ``precision="bf16"`` runs it with the BF16 hint) or
    ``.engine`` (TensorRT) written by ``python -m export``; an export folder loads the CPU path ``python -m
    export`` chose for the machine it ran on (``cpu_choice`` in its manifest). ``threads``: the CPU runtimes'
    intra-op threads (None: the runtime's default)."""
    path = Path(path)
    if path.is_dir() and (path / META).is_file():
        choice = load_meta(path / META).get("cpu_choice")
        if not choice:
            raise UserError(
                f"{path}: this export chose no CPU path (select.enabled was off); name a file in it"
            )
        path = path / choice["path"]
    if not path.is_file():
        raise UserError(f"{path}: exported model not found")
    meta, entry = read_meta(path)
    if entry is not None and entry.get("status") == "failed":
        raise UserError(
            f"{path}: this export failed its parity check ({entry.get('reason')}); not loading it"
        )
    family = Family.from_meta(meta)
    kind = SUFFIXES[path.suffix]
    if kind == "onnx":
        runner, fmt = OrtRunner(path, threads=threads), "onnx"
    elif kind == "openvino":
        prec = precision or (entry or {}).get("precision", "fp32")
        u8 = family.graph_preprocessing if (entry or {}).get("u8_input") else None
        runner, fmt = OpenVINORunner(path, prec, threads, u8), f"openvino_{prec}"
    else:
        runner, fmt = TensorRTRunner(path), (entry or {}).get("format", "tensorrt")
    model = ExportedModel(family, runner, str(path), fmt)
    if kind != "tensorrt":  # an engine's input shape is fixed at build time from the same manifest
        _check_input_shapes(model, runner.input_shapes())
    return model


def _check_input_shapes(model: ExportedModel, shapes: dict[str, list[int | None]]) -> None:
    """The manifest's input size against the graph's own input shape (a manifest from others may have been
    edited): the feeds the manifest implies must fit every static dimension, else one line naming both."""
    page = np.full((*model.family.input_hw, 3), 255, np.uint8)
    feeds, _ = model.feeds(page)
    for name, arr in feeds.items():
        want = shapes.get(name)
        if want is None:
            raise DataError(f"{model.checkpoint}: the graph has no input {name!r} that its {META} names")
        if len(want) != arr.ndim or any(
            w is not None and w != a for w, a in zip(want, arr.shape, strict=False)
        ):
            shown = "x".join("?" if w is None else str(w) for w in want)
            raise DataError(
                f"{model.checkpoint}: its {META} says imgsz {model.family.imgsz} (input {name} "
                f"{'x'.join(map(str, arr.shape))}) but the graph's input is {shown}"
            )


def reference_model(family: Family, device: str = "cpu") -> ExportedModel:
    """The PyTorch module through the same pre/post-processing: the reference of every parity check."""
    return ExportedModel(family, TorchRunner(family, device), family.source, "pytorch")
