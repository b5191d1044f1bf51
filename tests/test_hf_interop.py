"""A transformers run folder is a Hugging Face model folder: AutoImageProcessor, AutoModelForObjectDetection and
pipeline("object-detection") load it offline, and the pipeline finds the boxes our predict() finds.

The models are tiny random-init debug models (conf/model/debug) with their heads' weights spread out (std 0.3)
so that queries differ from one another and from page to page; nothing is trained.

What differs, measured here: the processor resizes with torchvision's antialiased bilinear, we with PIL's: at
most one grey level on a few pixels in a thousand (0.0175 after normalisation); sizes, padding, mask and
normalisation are the same. The pipeline truncates boxes to whole pixels and does not clip them to the page.
On the embedded pages (portrait and landscape) the top-5 pipeline boxes match ours at IoU >= 0.98 with scores
within 3e-3 (DETR; 1e-5 for Conditional-DETR and YOLOS); decoding the same raw outputs, the processor's
post-processing and ours agree to 1e-3 px.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import EMBEDDED, HF_TINY, compose_cfg
from training.backends import build_detector
from training.backends.hf_processing import decode, resize_pad
from training.data.images import IMAGENET_STD

FAMILIES = {"detr": "debug/detr", "conditional_detr": "debug/conditional-detr", "yolos": "debug/yolos"}
PROCESSORS = {
    "detr": "DetrImageProcessor",
    "conditional_detr": "ConditionalDetrImageProcessor",
    "yolos": "YolosImageProcessor",
}
IMGSZ = 64
ONE_GREY_LEVEL = 1 / 255 / min(IMAGENET_STD) + 1e-5


def _pages() -> list[np.ndarray]:
    """Two embedded pages, portrait as stored and turned to landscape: neither is square."""
    files = sorted(p for p in (EMBEDDED / "valid").iterdir() if p.suffix == ".jpg")[:2]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return arrays + [np.ascontiguousarray(np.rot90(a)) for a in arrays]


def tiny_detector(family: str, run_dir):
    """A random-init debug detector of ``family`` with spread-out head weights, saved to ``run_dir/weights/best``
    the way training saves it (``_save``); returns (detector, folder)."""
    cfg = compose_cfg("train", [f"model={FAMILIES[family]}", *HF_TINY, f"train.imgsz={IMGSZ}"])
    det = build_detector(cfg.model, run_dir)
    torch.manual_seed(0)
    det.class_names, det.imgsz = ["signature"], IMGSZ
    det.model = det._build(det.class_names).eval()
    with torch.no_grad():
        for name, p in det.model.named_parameters():
            if "backbone" not in name:
                p.normal_(0, 0.3)
    folder = run_dir / "weights" / "best"
    det._save(folder)
    return det, folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    family = request.param
    det, folder = tiny_detector(family, tmp_path_factory.mktemp(family))
    return family, det, folder


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` with each row of ``b`` (xyxy)."""
    lo, hi = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_run_folder_holds_what_the_auto_classes_need(saved):
    import transformers
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    family, det, folder = saved
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "sigdet.json"} <= {
        p.name for p in folder.iterdir()
    }
    proc = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(proc, getattr(transformers, PROCESSORS[family]))
    assert proc.size.max_height == proc.size.max_width == IMGSZ
    assert proc.do_pad and proc.pad_size.height == proc.pad_size.width == IMGSZ
    np.testing.assert_allclose(proc.image_std, IMAGENET_STD)
    model = AutoModelForObjectDetection.from_pretrained(folder)
    assert model.config.id2label == {0: "signature"} and model.config.label2id == {"signature": 0}
    assert json.loads((folder / "sigdet.json").read_text())["box_frame"] == "image"
    assert det.export_spec().options["box_frame"] == "image"  # exports decode in the same frame


def test_processor_preprocesses_and_decodes_as_we_do(saved):
    from transformers import AutoImageProcessor

    family, det, folder = saved
    proc = AutoImageProcessor.from_pretrained(folder)
    for page in _pages():
        pil = Image.fromarray(page)
        theirs = proc(images=[pil], return_tensors="pt")
        ours, mask, scale = resize_pad(pil, IMGSZ)
        assert torch.equal(theirs["pixel_mask"][0], mask)  # same size after resizing, same padding
        diff = (theirs["pixel_values"][0] - ours).abs()
        assert diff.max() <= ONE_GREY_LEVEL and (diff > 1e-4).float().mean() < 0.01, (diff.max(), diff.mean())
        # the same raw outputs through their post-processing and ours: the same boxes in the page's frame
        kwargs = {"pixel_values": ours[None]}
        if det.use_mask:
            kwargs["pixel_mask"] = mask[None]
        with torch.inference_mode():
            out = det.model(**kwargs)
        W, H = pil.size
        (pp,) = proc.post_process_object_detection(out, threshold=0.0, target_sizes=[(H, W)])
        mine = decode(
            out.logits[0], out.pred_boxes[0], scale, (W, H), IMGSZ, det.score_mode, 0.0, 100, "image"
        )
        order = pp["scores"].argsort(descending=True)[:20]
        boxes = pp["boxes"][order].clamp(min=0).minimum(torch.tensor([W, H, W, H])).numpy()
        np.testing.assert_allclose(pp["scores"][order].numpy(), mine.scores[:20], atol=1e-6)
        np.testing.assert_allclose(boxes, mine.boxes[:20], atol=1e-3)


def test_pipeline_finds_our_boxes(saved):
    """The pipeline (loaded from the folder alone, offline) on non-square pages: each of its 5 best boxes is one
    of ours (IoU > 0.95, score within 5e-3); with the old canvas-normalised boxes this fails (IoU ~0.76)."""
    from transformers import pipeline

    _, det, folder = saved
    pipe = pipeline("object-detection", model=str(folder))
    for page in _pages():
        H, W = page.shape[:2]
        theirs = sorted(pipe(Image.fromarray(page), threshold=0.0), key=lambda o: -o["score"])
        ours = det.predict([page], conf=0.0)[0]
        assert len(theirs) > 5 and {o["label"] for o in theirs} == {"signature"}
        assert abs(theirs[0]["score"] - ours.scores[0]) < 5e-3
        for o in theirs[:5]:
            box = np.array([o["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")], float)
            box = box.clip(0, [W, H, W, H])
            close = np.abs(ours.scores - o["score"]) < 5e-3
            assert close.any() and _iou(box, ours.boxes[close]).max() > 0.95, (o, ours.boxes[:5])


def test_runs_saved_before_the_box_frame_decode_as_they_were_trained(saved, tmp_path):
    """A sigdet.json without box_frame (runs before the interop) loads as canvas-normalised boxes."""
    import shutil

    family, det, folder = saved
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    meta = json.loads((old / "sigdet.json").read_text())
    del meta["box_frame"]
    (old / "sigdet.json").write_text(json.dumps(meta))
    again = build_detector(det.model_cfg, tmp_path / "again")
    again.load(old)
    assert again.box_frame == "canvas" and again.export_spec().options["box_frame"] == "canvas"
    page = _pages()[0]  # portrait: the canvas frame spans the height on both axes
    H, W = page.shape[:2]
    new, canvas = det.predict([page], conf=0.0)[0], again.predict([page], conf=0.0)[0]
    np.testing.assert_allclose(canvas.scores, new.scores, atol=1e-6)
    inside = (canvas.boxes[:, 2] < W - 1) & (new.boxes[:, 2] < W - 1)
    np.testing.assert_allclose(canvas.boxes[inside, 2], new.boxes[inside, 2] * H / W, rtol=1e-4, atol=1e-3)
