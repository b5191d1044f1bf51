"""The export layer's view of a model: what its backend's :meth:`~training.backends.base.Backend.export_spec`
gives (the traceable module, its inputs and outputs, the options of its pre- and post-processing), with the
backend's own static ``preprocess`` / ``postprocess`` looked up in the registry: no dispatch on names here.

A :class:`Family` built from a checkpoint holds the PyTorch module (the reference of every parity check); one
rebuilt from an export's ``sigdet_export.json`` holds only what pre/post-processing needs, so an exported model
runs without the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from training.backends import BACKENDS, Backend, ExportSpec, backend_of, get_backend
from training.backends.base import DYNAMIC_HW, EVAL_CONF, is_dynamic_hw
from training.cli import UserError
from training.data.images import as_pil


@dataclass
class Family(ExportSpec):
    """A loaded or exported model as the export layer sees it: the backend's :class:`ExportSpec` plus the
    backend class whose static ``preprocess`` / ``postprocess`` / ``example_inputs`` every runtime shares."""

    @cached_property
    def backend(self) -> type[Backend]:
        """Looked up once: feeds / decode run per image."""
        return get_backend(self.kind)

    @property
    def is_detector(self) -> bool:
        return self.backend.is_detector

    @classmethod
    def from_spec(cls, spec: ExportSpec) -> Family:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(spec)})

    def meta(self) -> dict:
        keys = ("kind", "imgsz", "class_names", "input_names", "output_names", "options", "source")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_meta(cls, meta: dict) -> Family:
        if meta["kind"] not in BACKENDS:
            raise UserError(f"export of kind {meta['kind']!r}: not one of the backends {list(BACKENDS)}")
        names = (list(meta[k]) for k in ("class_names", "input_names", "output_names"))
        options, source = dict(meta.get("options") or {}), str(meta.get("source", ""))
        return cls(meta["kind"], int(meta["imgsz"]), *names, options, source=source)

    # ---- pre-processing: one image -> named batch-1 arrays, plus what decoding needs ----
    def feeds(self, image) -> tuple[dict[str, np.ndarray], tuple]:
        return self.backend.preprocess(as_pil(image), self.imgsz, self.options)

    def feeds_u8(self, image) -> tuple[dict[str, np.ndarray], tuple]:
        """The uint8 page for a graph that converts it itself (:attr:`graph_preprocessing`). An ``HxWx3`` uint8
        array goes to the backend as is (no PIL round trip: 0.85 -> 0.1 ms for a 640 page)."""
        rgb = (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
        )
        return self.backend.preprocess_u8(image if rgb else as_pil(image), self.imgsz, self.options)

    @property
    def graph_preprocessing(self) -> dict | None:
        """The conversion an OpenVINO graph can take over (``Backend.in_graph_preprocessing``), or None."""
        return self.backend.in_graph_preprocessing(self.options)

    @property
    def dynamic_hw(self) -> bool:
        """Whether the input's height and width are symbolic: each page letterboxed into its own rectangle."""
        return is_dynamic_hw(self.options.get("input_hw"))

    @property
    def input_hw(self) -> tuple[int, int]:
        """The network input's (height, width): ``imgsz`` square unless the export is rectangular; the largest
        one (the square) for a dynamic input."""
        hw = self.options.get("input_hw")
        return (int(hw[0]), int(hw[1])) if hw and not self.dynamic_hw else (self.imgsz, self.imgsz)

    def with_input_hw(self, input_hw) -> Family:
        """This model with a rectangular input (backends with ``rect_inputs``): a fixed ``[h, w]`` (both multiples
        of 32, the largest stride of the YOLO heads), pages letterboxed into ``h x w``; or ``dynamic``, each page
        scaled to ``imgsz`` on its long side and padded to the stride on the other (a graph with symbolic height
        and width; the module must come from ``load_family(..., dynamic=True)``). A copy sharing the module."""
        if is_dynamic_hw(input_hw):
            hw = DYNAMIC_HW
        else:
            # a list or ListConfig; a lone value or a string other than dynamic fails the length check below
            hw = [input_hw] if isinstance(input_hw, (str, int, float)) else list(input_hw)
            if len(hw) != 2 or not all(isinstance(v, int) and v >= 32 and v % 32 == 0 for v in hw):
                raise UserError(
                    f"input_hw={input_hw}: expected [height, width], both multiples of 32 (e.g. [640,480]), "
                    f"or {DYNAMIC_HW}"
                )
        if not self.backend.rect_inputs:
            raise UserError(
                f"input_hw={hw}: rectangular inputs are for the ultralytics detectors, not {self.kind}"
            )
        imgsz = self.imgsz if is_dynamic_hw(hw) else max(hw)
        return replace(self, options={**self.options, "input_hw": hw}, imgsz=imgsz)

    def batch_feeds(self, images: list) -> dict[str, np.ndarray]:
        """Stacked feeds of several images (calibration, batched classification)."""
        parts = [self.feeds(im)[0] for im in images]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # ---- post-processing: raw outputs of one image -> Detections (or class probabilities) ----
    def decode(self, outputs: list[np.ndarray], ctx: tuple, conf: float = EVAL_CONF):
        return self.backend.postprocess(outputs, ctx, self.imgsz, self.options, conf)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return self.backend.example_inputs(self.imgsz, self.options, batch)

    def torch_outputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the PyTorch reference on numpy feeds (same layout as the exported graph's)."""
        if self.module is None:
            raise UserError("this model was loaded from an export: no PyTorch module to run")
        dev = next(self.module.parameters()).device
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(dev) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().cpu().numpy() for o in out]


def load_family(
    checkpoint: str | Path,
    decode,
    kind: str = "auto",
    imgsz: int | None = None,
    dynamic: bool = False,
    input_hw: list[int] | None = None,
) -> Family:
    """The adapter of a trained checkpoint of any backend, with its PyTorch module on the CPU in eval mode.

    ``decode``: backend -> its decoding (``evaluation.decode``, conf/decode/default.yaml), baked into the export.
    ``input_hw``: a rectangular ``[h, w]`` network input or ``dynamic`` (:meth:`Family.with_input_hw`); pages
    are letterboxed into it like into the square. ``dynamic``: a symbolic batch axis; a dynamic input also
    makes the module compute its anchors from the input's shape.
    """
    kind = backend_of(checkpoint) if kind in (None, "auto") else kind
    if kind not in BACKENDS:
        raise UserError(f"backend={kind!r}: valid values are {['auto', *BACKENDS]}")
    backend = get_backend(kind).from_checkpoint(checkpoint, decode.get(kind), device="cpu")
    family = Family.from_spec(backend.export_spec(imgsz, dynamic or is_dynamic_hw(input_hw)))
    family.source = str(checkpoint)
    return family.with_input_hw(input_hw) if input_hw else family


def input_shape_words(family: Family) -> str:
    """The network input in words for tables: ``640x480 (h x w)``, or what a dynamic input does."""
    if family.dynamic_hw:
        return f"dynamic (each page {family.imgsz} on its long side, the other padded to a multiple of 32)"
    return "x".join(map(str, family.input_hw)) + " (h x w)"


def write_meta(family: Family, path: Path, extra: dict) -> Path:
    doc = {"sigdet_export": 1, **family.meta(), **extra}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path
