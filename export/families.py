"""One adapter per model family: the traceable module, its inputs and outputs, and the family's pre- and
post-processing (which live in ``training``: ``yolo_processing``, ``hf_processing``, ``classifier.model``).

A :class:`Family` built from a checkpoint holds the PyTorch module (the reference of every parity check); one
rebuilt from an export's ``sigdet_export.json`` holds only what pre/post-processing needs, so an exported model
runs without the training libraries' checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.images import load_rgb
from training.errors import UserError

KINDS = ("ultralytics", "transformers", "classifier")


@dataclass
class Family:
    kind: str  # ultralytics | transformers | classifier
    imgsz: int
    class_names: list[str]
    input_names: list[str]
    output_names: list[str]
    options: dict = field(default_factory=dict)  # head / score_mode / use_mask / normalize
    module: torch.nn.Module | None = None
    source: str = ""  # the checkpoint it came from

    @property
    def is_detector(self) -> bool:
        return self.kind != "classifier"

    def meta(self) -> dict:
        return {
            "kind": self.kind,
            "imgsz": self.imgsz,
            "class_names": self.class_names,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "options": self.options,
            "source": self.source,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> Family:
        return cls(
            meta["kind"],
            int(meta["imgsz"]),
            list(meta["class_names"]),
            list(meta["input_names"]),
            list(meta["output_names"]),
            dict(meta.get("options") or {}),
            None,
            str(meta.get("source", "")),
        )

    # ---- pre-processing: one image -> named batch-1 arrays, plus what decoding needs ----
    def feeds(self, image) -> tuple[dict[str, np.ndarray], tuple]:
        pil = _pil(image)
        if self.kind == "ultralytics":
            from training.backends.yolo_processing import letterbox

            x, meta = letterbox(pil, self.imgsz)
            return {"images": x[None]}, (meta, pil.size)
        if self.kind == "transformers":
            from training.backends.hf_processing import resize_pad

            pixels, mask, scale = resize_pad(pil, self.imgsz)
            feeds = {"pixel_values": pixels[None].numpy()}
            if self.options.get("use_mask"):
                feeds["pixel_mask"] = mask[None].numpy().astype(np.int64)
            return feeds, (scale, pil.size)
        from training.classifier.model import preprocess

        return {"input": preprocess([pil], self.imgsz, self.options.get("normalize", "imagenet")).numpy()}, ()

    def batch_feeds(self, images: list) -> dict[str, np.ndarray]:
        """Stacked feeds of several images (calibration, batched classification)."""
        parts = [self.feeds(im)[0] for im in images]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # ---- post-processing: raw outputs of one image -> Detections (or class probabilities) ----
    def decode(self, outputs: list[np.ndarray], ctx: tuple, conf: float = 0.001):
        if self.kind == "ultralytics":
            from training.backends.yolo_processing import decode

            meta, size = ctx
            return decode(
                outputs[0][0],
                self.options["head"],
                meta,
                size,
                self.imgsz,
                conf,
                float(self.options.get("iou", 0.7)),
                int(self.options.get("max_det", 300)),
            )
        if self.kind == "transformers":
            from training.backends.hf_processing import decode

            scale, size = ctx
            return decode(
                torch.from_numpy(np.asarray(outputs[0][0])),
                torch.from_numpy(np.asarray(outputs[1][0])),
                scale,
                size,
                self.imgsz,
                self.options["score_mode"],
                conf,
                int(self.options.get("max_det", 100)),
            )
        logits = np.asarray(outputs[0], dtype=np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        s = self.imgsz
        if self.kind == "transformers" and self.options.get("use_mask"):
            return torch.rand(batch, 3, s, s), torch.ones(batch, s, s, dtype=torch.long)
        return (torch.rand(batch, 3, s, s),)

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


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    return load_rgb(image)


def detect_kind(checkpoint: str | Path) -> str:
    """Family of a checkpoint: a transformers run folder, a classifier .pt, or an ultralytics .pt."""
    p = Path(checkpoint)
    if not p.exists():
        raise UserError(f"{p}: checkpoint not found")
    if p.is_dir():
        return "transformers"
    from training.checkpoints import check_ultralytics_checkpoint, load_weights, names_ultralytics_classes

    # what the pickle names decides, without unpickling it: ultralytics checkpoints name its model classes
    check_ultralytics_checkpoint(p)
    if names_ultralytics_classes(p):
        return "ultralytics"
    from training.classifier.model import is_classifier_checkpoint

    obj = load_weights(p)
    if is_classifier_checkpoint(obj):
        return "classifier"
    raise UserError(
        f"{p}: not a checkpoint of any family {list(KINDS)} (a {type(obj).__name__} of plain tensors/data)"
    )


def load_family(
    checkpoint: str | Path, kind: str = "auto", imgsz: int | None = None, dynamic: bool = False
) -> Family:
    """The adapter of a trained checkpoint of any family, with its PyTorch module on the CPU in eval mode."""
    kind = detect_kind(checkpoint) if kind in (None, "auto") else kind
    if kind not in KINDS:
        raise UserError(f"backend={kind!r}: valid values are {['auto', *KINDS]}")
    src = str(checkpoint)
    if kind == "ultralytics":
        from omegaconf import OmegaConf

        from training.backends.ultralytics import UltralyticsDetector
        from training.backends.yolo_processing import export_module, head_kind

        det = UltralyticsDetector(
            OmegaConf.create({"backend": "ultralytics", "name": "export"}), Path("."), None
        )
        det.load(src)
        net = det.model.model.cpu()
        size = det._imgsz(imgsz)
        head = head_kind(net)
        return Family(
            kind,
            size,
            list(det.class_names),
            ["images"],
            ["output0"],
            {"head": head, "iou": 0.7, "max_det": 300},
            export_module(net, dynamic=dynamic),
            src,
        )
    if kind == "transformers":
        from omegaconf import OmegaConf

        from training.backends.hf_processing import GraphWrapper
        from training.backends.transformers import TransformersDetector

        det = TransformersDetector(
            OmegaConf.create({"backend": "transformers", "name": "export"}), Path("."), None
        )
        det._device_fixed = True
        det.device = torch.device("cpu")
        det.load(src)
        model = det.model.cpu().eval()
        inputs = ["pixel_values", "pixel_mask"] if det.use_mask else ["pixel_values"]
        return Family(
            kind,
            int(imgsz or det.imgsz),
            list(det.class_names),
            inputs,
            ["logits", "pred_boxes"],
            {"score_mode": det.score_mode, "use_mask": bool(det.use_mask), "max_det": 100},
            GraphWrapper(model, det.use_mask).eval(),
            src,
        )
    from training.classifier.model import load_classifier

    clf = load_classifier(src).cpu().eval()
    return Family(
        kind,
        int(imgsz or clf.imgsz),
        list(clf.classes),
        ["input"],
        ["logits"],
        {"normalize": clf.normalize},
        clf,
        src,
    )


def write_meta(family: Family, path: Path, extra: dict) -> Path:
    doc = {"sigdet_export": 1, **family.meta(), **extra}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path
