"""Pre- and post-processing of the ultralytics detectors (YOLOv8 / YOLO11 / YOLOv10 / YOLO26 / RT-DETR) outside
ultralytics, in one place: the exported models (ONNX Runtime, OpenVINO, TensorRT) and their PyTorch reference
all go through it, so that one image gives the same boxes on every runtime.

Letterbox to a fixed ``imgsz x imgsz`` square, a fixed ``(h, w)`` rectangle, or (a dynamic input) the page's own
rectangle padded to the stride (aspect kept, centred, grey 114 padding, RGB, [0, 1]); decoding depends on the
head's raw export output:

- ``anchors`` (YOLOv8 / YOLO11 ``Detect``, and the one-to-many head of YOLOv10 / YOLO26): ``(B, 4 + nc, A)``, boxes
  ``cx, cy, w, h`` in input pixels, class scores after sigmoid; class-aware NMS at ``iou``.
- ``end2end`` (the one-to-one head of YOLOv10 / YOLO26, when the model is switched to it: ``model.end2end``, which
  ultralytics 8.4 sets only for ``nms=False``; its default predicts with the one-to-many head and NMS, and so do the
  runs here): ``(B, min(max_det, A), 6)`` = ``x1, y1, x2, y2, score, class`` in input pixels; no NMS.
- ``rtdetr`` (``RTDETRDecoder``): ``(B, queries, 4 + nc)``, boxes ``cx, cy, w, h`` normalised to the input; no NMS.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.backends.base import Detections

PAD_VALUE = 114


def letterbox_u8(
    img: Image.Image | np.ndarray, imgsz: int | tuple[int, int], stride: int = 0
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """RGB PIL image (or ``HxWx3`` uint8 RGB array, used as is) -> (``H x W x 3`` uint8 page, (gain, pad_x,
    pad_y)): the letterboxed canvas before any conversion, what an OpenVINO graph with in-graph pre-processing
    takes (``training.inference.runtimes``). ``imgsz`` is the square side or an ``(h, w)`` input (rectangular exports).

    ``stride`` > 0 (exports with a dynamic input, ``input_hw=dynamic``): the page is scaled as into ``imgsz``,
    but each side of the canvas is padded only up to the next multiple of ``stride`` (ultralytics'
    ``LetterBox(auto=True)``, its rectangular inference): a 630 x 480 portrait page into 640 gives 640 x 512."""
    th, tw = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    arr = img if isinstance(img, np.ndarray) else np.asarray(img.convert("RGB"))
    h, w = arr.shape[:2]
    gain = min(tw / w, th / h)
    nw, nh = max(1, round(w * gain)), max(1, round(h * gain))
    if stride:
        th, tw = nh + (th - nh) % stride, nw + (tw - nw) % stride  # ultralytics' np.mod(dw, stride)
    px, py = (tw - nw) / 2, (th - nh) / 2
    canvas = np.full((th, tw, 3), PAD_VALUE, np.uint8)
    left, top = round(px - 0.1), round(py - 0.1)  # ultralytics' rounding of the two borders
    if (nw, nh) != (w, h):
        # cv2's bilinear, as ultralytics trains and predicts with: PIL's antialiased bilinear thins the strokes
        # differently and moved a trained model's scores by 4x in a check
        import cv2

        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + nh, left : left + nw] = arr
    return canvas, (gain, float(left), float(top))


def letterbox(
    img: Image.Image, imgsz: int | tuple[int, int], stride: int = 0
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """RGB PIL image -> (``3 x H x W`` float32 in [0, 1], (gain, pad_x, pad_y)); ``stride``: :func:`letterbox_u8`."""
    canvas, meta = letterbox_u8(img, imgsz, stride)
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0, meta


def _unletterbox(
    xyxy: np.ndarray, meta: tuple[float, float, float], orig_size: tuple[int, int]
) -> np.ndarray:
    gain, px, py = meta
    w, h = orig_size
    return ((xyxy.astype(np.float64) - (px, py, px, py)) / gain).clip(0, (w, h, w, h))


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    xy, half = b[:, :2], b[:, 2:4] / 2
    return np.concatenate([xy - half, xy + half], 1)


def decode(
    output: np.ndarray,
    head: str,
    meta: tuple[float, float, float],
    orig_size: tuple[int, int],
    imgsz: int | tuple[int, int],
    conf: float,
    iou: float | None,
    max_det: int,
) -> Detections:
    """One image's raw head output (no batch axis) -> Detections in the original frame."""
    out = np.asarray(output, dtype=np.float32)
    if head in ("anchors", "rtdetr"):
        p = out.T if head == "anchors" else out  # (A, 4 + nc) / (queries, 4 + nc)
        labels = p[:, 4:].argmax(1)
        scores = p[:, 4:].max(1)
        keep = (
            scores >= conf
        )  # at the confidence itself kept, as every other decoder (an operating point is a score)
        boxes, scores, labels = _cxcywh_to_xyxy(p[keep, :4]), scores[keep], labels[keep]
        if head == "rtdetr":
            h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
            boxes = boxes * np.array([w, h, w, h], np.float32)
        elif len(boxes):
            from torchvision.ops import batched_nms

            order = np.argsort(-scores, kind="stable")[:30000]
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            k = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
            k = k[:max_det].numpy()
            boxes, scores, labels = boxes[k], scores[k], labels[k]
    elif head == "end2end":
        keep = out[:, 4] >= conf
        boxes, scores, labels = out[keep, :4], out[keep, 4], out[keep, 5].astype(np.int64)
    else:
        raise ValueError(f"unknown head kind {head!r}")
    order = np.argsort(-scores, kind="stable")[:max_det]
    return Detections(_unletterbox(boxes[order], meta, orig_size), scores[order], labels[order])


def head_kind(model: torch.nn.Module) -> str:
    """``anchors`` / ``end2end`` / ``rtdetr`` for an ultralytics DetectionModel: the head its exported module keeps
    (``fuse`` drops the one-to-one head of a YOLOv10 / YOLO26 that is not switched to it, and the other way round)."""
    from training.compat.ultralytics import RTDETRDecoder

    if any(isinstance(m, RTDETRDecoder) for m in model.modules()):
        return "rtdetr"
    return "end2end" if getattr(model, "end2end", False) else "anchors"


def export_module(model: torch.nn.Module, dynamic: bool = False) -> torch.nn.Module:
    """The DetectionModel in the state ultralytics' exporter puts it in (eval, fused, heads returning one raw
    tensor): the PyTorch reference of every exported model, and what ``torch.onnx.export`` traces."""
    import copy

    from training.compat.ultralytics import export_mode

    model = copy.deepcopy(model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.fuse() if hasattr(model, "fuse") else model
    export_mode(model, dynamic)
    return model
