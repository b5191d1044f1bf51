"""Pre- and post-processing of the transformers detectors, in one place (training, prediction and exported
models all go through it).

Two input conventions (:data:`RESIZES`), each family with its upstream one:

- ``letterbox`` (DETR, Conditional-DETR, YOLOS): resize the longest side to ``imgsz`` (keeping the aspect ratio;
  sizes rounded down as transformers' own image processors round them), pad at the bottom / right to
  ``imgsz x imgsz`` with a pixel mask;
- ``stretch`` (RT-DETRv2, D-FINE, DEIMv2, RF-DETR): resize to ``imgsz x imgsz`` whatever the aspect ratio, as their
  upstream processors do (``size: {height, width}``, no padding): their anchor-based decoders predict boxes relative
  to the whole input, which is then the whole image.

Pixels are scaled to [0, 1] and, where the family's pretraining did (``normalize``), standardised with ImageNet
statistics (RT-DETRv2, D-FINE and DEIMv2's HGNetv2 models are not). The family's transformers image processor,
configured by :func:`processor_kwargs` and saved in every run folder, does the same (its resize is torchvision's
antialiased bilinear, ours PIL's: at most one grey level apart on a few pixels in a thousand).

Boxes are normalised ``cx, cy, w, h`` in one of two frames (:data:`BOX_FRAMES`): ``image`` (relative to the image,
what transformers' ``post_process_object_detection`` and ``pipeline("object-detection")`` assume, so the library
decodes our models as we do; the frame of every run since the Hugging Face interop) or ``canvas`` (relative to the
padded square; runs trained before it, whose ``sigdet.json`` names no frame). A stretched input is the image, so
both frames are the same there.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image

from training.backends.base import EVAL_CONF, Detections
from training.data.images import IMAGENET_MEAN, IMAGENET_STD

# what normalised box coordinates are relative to: the image (transformers' convention) or the padded square
BOX_FRAMES = ("image", "canvas")
# how a page becomes the square input: aspect kept and padded (with a pixel mask), or stretched to the square
RESIZES = ("letterbox", "stretch")


def resized_size(w: int, h: int, imgsz: int) -> tuple[int, int]:
    """``(width, height)`` of a ``w x h`` image resized to fit ``imgsz``: transformers' ``max_height`` /
    ``max_width`` resize (``get_image_size_for_max_height_width``), rounding down, never below 1 pixel."""
    s = min(imgsz / h, imgsz / w)
    return max(1, int(w * s)), max(1, int(h * s))


def processor_kwargs(imgsz: int, resize: str = "letterbox", normalize: bool = True) -> dict:
    """Arguments of a transformers DETR-style / RT-DETR-style image processor that preprocess as
    :func:`preprocess_image` does with ``resize`` and ``normalize`` (the run folder's ``preprocessor_config.json``)."""
    _check_resize(resize)
    kwargs = {
        "do_resize": True,
        "resample": int(Image.Resampling.BILINEAR),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": bool(normalize),
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }
    if resize == "stretch":
        return {**kwargs, "size": {"height": imgsz, "width": imgsz}, "do_pad": False}
    return {
        **kwargs,
        "size": {"max_height": imgsz, "max_width": imgsz},
        "do_pad": True,
        "pad_size": {"height": imgsz, "width": imgsz},
    }


def _check_resize(resize: str) -> None:
    if resize not in RESIZES:
        raise ValueError(f"unknown resize {resize!r}: valid are {list(RESIZES)}")


def _to_tensor(img: Image.Image, size: tuple[int, int], normalize: bool) -> torch.Tensor:
    """``img`` resized to ``size`` (w, h) with PIL's bilinear, as a ``3 x h x w`` float tensor in [0, 1],
    standardised with ImageNet statistics when ``normalize``."""
    arr = np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    if normalize:
        t = (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return t


def preprocess_image(
    img: Image.Image, imgsz: int, resize: str = "letterbox", normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """RGB PIL image -> (``3 x imgsz x imgsz`` tensor, ``imgsz x imgsz`` mask, scale), by ``resize``
    (:data:`RESIZES`): :func:`resize_pad`, or the page stretched to the square (mask all ones; scale
    ``imgsz / longest side``, which only the ``canvas`` frame reads)."""
    _check_resize(resize)
    if resize == "letterbox":
        return resize_pad(img, imgsz, normalize)
    w, h = img.size
    return (
        _to_tensor(img, (imgsz, imgsz), normalize),
        torch.ones(imgsz, imgsz, dtype=torch.long),
        imgsz / max(w, h),
    )


def resize_pad(
    img: Image.Image, imgsz: int, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """RGB PIL image -> (``3 x imgsz x imgsz`` tensor, normalised unless ``normalize`` is false, ``imgsz x imgsz``
    mask, scale): the longest side resized to ``imgsz``, padded with zeros at the bottom / right."""
    w, h = img.size
    scale = imgsz / max(w, h)
    nw, nh = resized_size(w, h, imgsz)
    out = torch.zeros(3, imgsz, imgsz)
    out[:, :nh, :nw] = _to_tensor(img, (nw, nh), normalize)
    mask = torch.zeros(imgsz, imgsz, dtype=torch.long)
    mask[:nh, :nw] = 1
    return out, mask, scale


def boxes_to_targets(
    xyxy: np.ndarray,
    labels: np.ndarray,
    scale: float,
    imgsz: int,
    image_size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Original-frame ``xyxy`` boxes -> DETR-style target (normalised ``cxcywh``).

    ``image_size`` ``(W, H)`` of the original image: normalised to the image (the ``image`` frame); None: to the
    padded square canvas (the ``canvas`` frame).
    """
    b = torch.as_tensor(np.asarray(xyxy, dtype=np.float32).reshape(-1, 4))
    if image_size is None:
        b = b * scale / imgsz
    else:
        W, H = image_size
        b = b / torch.tensor([W, H, W, H], dtype=torch.float32)
    cxcywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)
    return {
        "class_labels": torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1),
        "boxes": cxcywh.clamp(0, 1),
    }


def decode(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    scale: float,
    orig_size: tuple[int, int],
    imgsz: int,
    score_mode: str,
    conf: float = EVAL_CONF,
    max_det: int = 100,
    frame: str = "canvas",
) -> Detections:
    """One image's raw outputs -> Detections in the original frame.

    ``score_mode``: ``softmax`` (DETR, YOLOS: last logit is "no object") or ``sigmoid`` (Conditional-DETR and the
    focal-loss families RT-DETRv2, D-FINE, DEIMv2, RF-DETR: top-k over queries x classes, as their papers and the
    reference post-processing do). ``frame``: what the predicted
    boxes are normalised to (:data:`BOX_FRAMES`).
    """
    logits, pred_boxes = logits.float().cpu(), pred_boxes.float().cpu()
    if score_mode == "softmax":
        prob = logits.softmax(-1)[:, :-1]
        scores, labels = prob.max(-1)
        boxes = pred_boxes
    else:
        prob = logits.sigmoid()
        n_cls = prob.shape[1]
        k = min(max_det, prob.numel())
        scores, idx = prob.flatten().topk(k)
        labels, boxes = idx % n_cls, pred_boxes[idx // n_cls]
    xy, half = boxes[:, :2], boxes[:, 2:] / 2
    W, H = orig_size
    extent = torch.tensor([W, H, W, H], dtype=torch.float32) if frame == "image" else imgsz / scale
    xyxy = torch.cat([xy - half, xy + half], -1) * extent
    xyxy = xyxy.clamp(min=0).minimum(torch.tensor([W, H, W, H], dtype=xyxy.dtype))
    keep = scores >= conf
    order = scores[keep].argsort(descending=True)[:max_det]
    return Detections(xyxy[keep][order].numpy(), scores[keep][order].numpy(), labels[keep][order].numpy())


class GraphWrapper(torch.nn.Module):
    """Tensors in, ``(logits, pred_boxes)`` out: a transformers detector as a traceable graph (ONNX export), and the
    module every PyTorch prediction runs. ``ordered_topk``: the model picks its queries by top-k over the encoder's
    scores (the RT-DETR lineage, RF-DETR), whose ties are broken by index here as in ONNX's TopK
    (:func:`~training.compat.transformers.index_ordered_topk`), so that the model and its export agree."""

    def __init__(self, model, use_mask: bool, ordered_topk: bool = False):
        super().__init__()
        self.model, self.use_mask, self.ordered_topk = model, use_mask, ordered_topk

    def forward(self, pixel_values, pixel_mask=None):
        from training.compat.transformers import index_ordered_topk

        kwargs = {"pixel_values": pixel_values}
        if self.use_mask and pixel_mask is not None:
            kwargs["pixel_mask"] = pixel_mask
        with index_ordered_topk(self.model) if self.ordered_topk else contextlib.nullcontext():
            o = self.model(**kwargs)
        return o.logits, o.pred_boxes
