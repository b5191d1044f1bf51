"""Peer rows of the latency table: what a user of ultralytics would deploy instead of our export, measured in the
same run. ``YOLO(checkpoint).export(format="onnx")`` and ``YOLO(checkpoint).export(format="openvino",
int8=True, data=...)`` (its own NNCF recipe: TorchScript -> ``ov.convert_model``, MIXED preset, the head's box
decoding ignored), each run through ultralytics' own predictor (its letterbox, ``AutoBackend``, NMS), so that the
comparison includes everything ultralytics does around the runtime.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.backends.base import EVAL_CONF, Detections, ImageInput
from training.data.images import as_pil

log = logging.getLogger(__name__)

#: peer name -> ultralytics export arguments (``data`` is added for INT8 calibration)
PEERS = {
    "ultralytics_onnx": {"format": "onnx"},
    "ultralytics_openvino_int8": {"format": "openvino", "int8": True},
}


class UltralyticsPeer:
    """An ultralytics export run by ultralytics' own predictor, as a :class:`~training.backends.base.Predictor`
    (``imgsz`` is fixed by the export: the argument of :meth:`predict` is not read)."""

    def __init__(self, path: str | Path, imgsz: int | list[int], class_names: list[str]):
        from training.compat.ultralytics import YOLO

        self.yolo = YOLO(str(path), task="detect")
        # imgsz: the square side or the [h, w] the peer was exported at (a dynamic export: the long side)
        self.checkpoint, self.imgsz = Path(path), imgsz if isinstance(imgsz, list) else int(imgsz)
        self.class_names, self.device = class_names, "cpu"
        self.timing_page: np.ndarray | None = None  # what benchmark_forward letterboxes (None: a blank page)

    @staticmethod
    def _bgr(image) -> np.ndarray:
        """ultralytics takes numpy pages as BGR (OpenCV's order)."""
        return np.ascontiguousarray(np.asarray(as_pil(image).convert("RGB"))[..., ::-1])

    def predict(
        self, images: Sequence[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        # one page per call, batch 1 as ours: given a list of pages of different sizes, ultralytics' predictor
        # letterboxes them all into the square, even for a dynamic export (its LetterBox(auto=...) needs equal
        # shapes), which scored a dynamic peer as a square one
        results = [
            self.yolo.predict(
                self._bgr(im), imgsz=self.imgsz, conf=conf, device="cpu", verbose=False, max_det=300
            )[0]
            for im in images
        ]
        out = []
        for r in results:
            b = r.boxes
            out.append(Detections(b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64)))
        return out

    def benchmark_forward(self, imgsz: int | None = None):
        """ultralytics' ``AutoBackend`` alone on one page letterboxed by its own predictor (the latency
        protocol's model-only): ``timing_page``, or a blank page of the input size."""
        h, w = self.imgsz if isinstance(self.imgsz, list) else (self.imgsz, self.imgsz)
        page = np.full((h, w, 3), 255, np.uint8) if self.timing_page is None else self.timing_page
        self.predict([page])  # sets up the predictor
        predictor = self.yolo.predictor
        x = predictor.preprocess([self._bgr(page)])  # its letterbox: the shape it runs this page at
        backend = predictor.model

        def run() -> None:
            backend(x)

        return run


def export_peer(
    name: str,
    checkpoint: str | Path,
    imgsz: int | list[int],
    data_yaml: Path | None,
    out: Path,
    dynamic: bool = False,
) -> Path:
    """Run ultralytics' exporter for peer ``name`` on a copy of ``checkpoint`` in ``out`` (ultralytics writes
    its exports beside the weights); returns the exported file or folder. ``imgsz``: the input our export has
    (a square side or ``[h, w]``); ``dynamic``: symbolic height and width, for which ultralytics' predictor
    letterboxes each page into its own rectangle padded to the stride, as ours does."""
    from training.checkpoints import check_ultralytics_checkpoint
    from training.compat.ultralytics import YOLO, safe_load

    check_ultralytics_checkpoint(checkpoint)  # ultralytics unpickles it: refuse one that names foreign code

    if name not in PEERS:
        raise ValueError(f"peer {name!r}: valid are {list(PEERS)}")
    args = dict(PEERS[name])
    if args.get("int8"):
        if data_yaml is None:
            raise ValueError("ultralytics' INT8 export needs calibration data")
        args.update(data=str(data_yaml), split="train")  # the split our own INT8 calibrates on
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "model.pt"
    shutil.copyfile(checkpoint, weights)
    size = [int(v) for v in imgsz] if isinstance(imgsz, list) else int(imgsz)
    with safe_load():  # ultralytics loads the copy through its restricted loader
        path = YOLO(str(weights)).export(
            imgsz=size, dynamic=bool(dynamic), device="cpu", verbose=False, **args
        )
    log.info("%s: %s", name, path)
    return Path(path)
