"""The backend contract, for every registered backend: train a couple of steps, predict, evaluate, reload,
export through the backend's export_spec and pass the parity check."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict
from PIL import Image

from evaluation.evaluator import evaluate_detector
from evaluation.run import evaluate_run, validator
from tests.conftest import EMBEDDED, HF_TINY, ROOT, TINY, compose_cfg
from training.backends import BACKENDS, Detections, build_detector
from training.backends.base import Predictor
from training.backends.hf_processing import boxes_to_targets, decode, resize_pad
from training.data import load_dataset

# models used to check each backend; a backend added to BACKENDS without one here fails the first test
CONTRACT_MODELS = {
    "ultralytics": ["yolov8n", "yolo26n"],
    "transformers": [
        "debug/detr",
        "debug/conditional-detr",
        "debug/yolos",
        "debug/rt_detr_v2",
        "debug/d_fine",
        "debug/deimv2",
        "debug/rf_detr",
    ],
    "classifier": ["resnet18-classifier"],
}
CASES = [(b, m) for b, models in CONTRACT_MODELS.items() for m in models]


def test_every_backend_has_contract_models():
    assert set(CONTRACT_MODELS) == set(BACKENDS)


@pytest.fixture(scope="module", params=CASES, ids=[m for _, m in CASES])
def trained(request, tmp_path_factory):
    from training.train import train

    backend, model = request.param
    tmp = tmp_path_factory.mktemp(model.replace("/", "_"))
    if backend == "classifier":
        from evaluation.classification import evaluate_classifier_run, validation_metrics
        from tests.test_classifier import CLF_TINY

        cfg = compose_cfg("train", CLF_TINY, tmp)
        metrics = train(cfg, evaluate=evaluate_classifier_run, validate=validation_metrics)
        return backend, cfg, Path(cfg.paths.run_dir) / "weights" / "best.pt", metrics
    overrides = (
        [f"model={model}", *HF_TINY]
        if backend == "transformers"
        else ["experiment=quickstart", f"model={model}", *TINY]
    )
    cfg = compose_cfg("train", overrides, tmp)
    metrics = train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    checkpoint = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())["provenance"][
        "checkpoint"
    ]
    return backend, cfg, Path(checkpoint), metrics


def test_export_contract(trained, tmp_path):
    """Every backend: the checkpoint is recognised as its own, exports to ONNX through export_spec, and the
    exported graph with the backend's shared pre/post-processing passes the parity check."""
    from tests.conftest import CROPS_TINY, export_tiny
    from training.backends import backend_of
    from training.inference.exported import load_exported

    backend, cfg, checkpoint, _ = trained
    assert backend_of(checkpoint) == backend
    _, out, manifest = export_tiny(
        tmp_path, checkpoint, ["onnx"], CROPS_TINY if backend == "classifier" else []
    )
    (onnx,) = manifest["artifacts"]
    assert onnx["status"] == "passed", onnx
    model = load_exported(out / "model.onnx")
    assert model.family.kind == backend and model.family.is_detector == (backend != "classifier")


def _check_predictor(model, images) -> None:
    """``model`` satisfies the Predictor protocol: its members, predict's exact parameters (no ``**kwargs``
    swallowing a misspelt argument), one Detections per page, a timing closure."""
    assert isinstance(model, Predictor), type(model)
    params = inspect.signature(model.predict).parameters
    assert list(params) == ["images", "conf", "imgsz"], (type(model), list(params))
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())
    out = model.predict(images, conf=0.0)
    assert len(out) == len(images) and all(isinstance(d, Detections) for d in out)
    assert model.class_names == ["signature"] and str(model.device).startswith(("cpu", "cuda"))
    assert isinstance(model.checkpoint, Path)
    assert callable(model.benchmark_forward(None))


def test_predictor_contract(trained, tmp_path):
    """PyTorch models, exported models and ultralytics' own exports (peers) all satisfy the Predictor protocol:
    the evaluator, prediction and the latency protocol take any of them without probing."""
    from tests.conftest import export_tiny
    from training.inference.exported import load_exported

    backend, cfg, checkpoint, _ = trained
    if backend == "classifier":
        pytest.skip("the region classifier is not a detector (predict_proba, no boxes)")
    images = sorted(p for p in (EMBEDDED / "valid").iterdir() if p.suffix == ".jpg")[:2]
    det = build_detector(cfg.model, tmp_path)
    det.load(checkpoint)
    _check_predictor(det, images)
    _, out, _ = export_tiny(tmp_path, checkpoint, ["onnx"], [])
    _check_predictor(load_exported(out / "model.onnx"), images)
    if backend == "ultralytics":
        from export.peers import UltralyticsPeer, export_peer

        path = export_peer("ultralytics_onnx", checkpoint, int(cfg.train.imgsz), None, tmp_path / "peer")
        _check_predictor(UltralyticsPeer(path, int(cfg.train.imgsz), ["signature"]), images)


def test_contract(trained, tmp_path):
    backend, cfg, checkpoint, metrics = trained
    assert cfg.model.backend == backend
    if backend == "classifier":
        from training.backends import get_backend

        clf = get_backend(backend).from_checkpoint(checkpoint)
        assert clf.num_parameters() > 0 and clf.class_names == list(cfg.model.classes)
        probs = clf.predict_proba([np.full((40, 90, 3), 200, np.uint8), np.zeros((20, 20, 3), np.uint8)])
        assert probs.shape == (2, len(clf.class_names)) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert "test/accuracy" in metrics and "train/epochs" in metrics
        return
    for k in ("val/mAP50", "val/mAP50-95", "val/f1", "test/mAP50", "train/epochs"):
        assert k in metrics, k
    if backend == "transformers":
        assert metrics["train/steps"] == 2
    det = build_detector(cfg.model, tmp_path)
    det.load(checkpoint)
    assert det.num_parameters() > 0 and det.class_names == ["signature"]
    images = sorted(p for p in (EMBEDDED / "valid").iterdir() if p.suffix == ".jpg")[:3]
    out = det.predict(images, conf=0.0)
    assert len(out) == 3 and all(isinstance(d, Detections) and len(d) > 0 for d in out)
    for d, f in zip(out, images, strict=True):
        w, h = Image.open(f).size
        assert (
            (d.boxes >= -1e-3).all()
            and (d.boxes[:, [0, 2]] <= w + 1e-3).all()
            and (d.boxes[:, [1, 3]] <= h + 1e-3).all()
        )
    # reloading the checkpoint gives identical predictions
    again = build_detector(cfg.model, tmp_path / "again")
    again.load(checkpoint)
    for a, b in zip(out, again.predict(images, conf=0.0), strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    # the decoding comes from conf/decode: max_det there caps every image's boxes
    with open_dict(cfg):
        cfg.evaluation.decode[backend].max_det = 2
    capped = build_detector(cfg.model, tmp_path / "capped")
    capped.load(checkpoint)
    assert [len(d) for d in capped.predict(images, conf=0.0)] == [min(2, len(d)) for d in out]
    assert capped.export_spec().options["max_det"] == 2
    # an RGB array and the file give the same boxes
    arr = np.asarray(Image.open(images[0]).convert("RGB"))
    np.testing.assert_allclose(det.predict([arr], conf=0.0)[0].boxes, out[0].boxes, atol=1e-2)
    # the shared evaluator on the reloaded model reproduces the run's numbers
    split = load_dataset(cfg.data, ("val",))["val"]
    result, _ = evaluate_detector(det, split, OmegaConf.merge(cfg.evaluation, {"n_bootstrap": 0}))
    assert result.metrics["mAP50"] == pytest.approx(metrics["val/mAP50"], abs=1e-6)
    det.benchmark_forward(64)()


def test_hf_processing_round_trip():
    """Boxes -> training targets -> decode gives the original boxes back in the original frame."""
    img = Image.new("RGB", (300, 500))
    xyxy = np.array([[10, 20, 110, 70], [150, 400, 290, 480]], dtype=np.float32)
    _, mask, scale = resize_pad(img, 640)
    assert mask.sum() == round(300 * scale) * 640
    tgt = boxes_to_targets(xyxy, np.array([0, 0]), scale, 640)
    logits = torch_logits = np.full((2, 2), -10.0, dtype=np.float32)
    logits[:, 0] = 10.0
    import torch

    torch_logits = torch.from_numpy(logits)
    det = decode(torch_logits, tgt["boxes"], scale, img.size, 640, "softmax", conf=0.5)
    np.testing.assert_allclose(np.sort(det.boxes, 0), np.sort(xyxy, 0), atol=0.05)
    det = decode(
        torch.from_numpy(np.array([[10.0], [10.0]], dtype=np.float32)),
        tgt["boxes"],
        scale,
        img.size,
        640,
        "sigmoid",
        conf=0.5,
    )
    np.testing.assert_allclose(np.sort(det.boxes, 0), np.sort(xyxy, 0), atol=0.05)


def test_transformers_resume_continues_from_last(tmp_path):
    """Interrupted after epoch 1 of 2: resume picks up the optimizer state and finishes epoch 2 only."""
    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY, "train.max_steps=null"], tmp_path)

    with open_dict(cfg):
        cfg.train.epochs = 1
    run_dir = Path(cfg.paths.run_dir)
    det = build_detector(cfg.model, run_dir)
    first = det.train(cfg)
    assert first["train/epochs"] == 1
    state_file = run_dir / "weights" / "last" / "trainer_state.pt"
    assert state_file.is_file()
    with open_dict(cfg):
        cfg.train.epochs = 2
        cfg.resume = True
    det2 = build_detector(cfg.model, run_dir)
    second = det2.train(cfg)
    assert second["train/epochs"] == 2
    assert second["train/steps"] == first["train/steps"]  # one more epoch of the same size, not two


def test_offline_hub_id_is_one_clear_line(tmp_path, monkeypatch):
    from training.cli import OfflineError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg("train", ["experiment=upstream", "model=detr-resnet-50", "data=embedded"], tmp_path)
    det = build_detector(cfg.model, tmp_path)
    with pytest.raises(OfflineError) as e:
        det._build(["signature"])
    assert (
        "facebook/detr-resnet-50" in str(e.value)
        and "hf download" in str(e.value)
        and "\n" not in str(e.value)
    )


def test_from_pretrained_local_directory_gets_a_new_head(tmp_path, monkeypatch):
    """A local directory (as downloaded from the hub) loads with a head resized to our classes."""
    import transformers

    cfg = compose_cfg("train", ["experiment=quickstart", "model=debug/detr"], tmp_path)
    det = build_detector(cfg.model, tmp_path)
    src = det._build(["a", "b", "c"])  # a 'COCO-like' model with 3 classes
    src.save_pretrained(tmp_path / "hub_copy")
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.weights = str(tmp_path / "hub_copy")

    def no_network(*args, **kwargs):
        raise AssertionError(f"a local directory must load without the network (tried {args})")

    import socket

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the guarantee must not rest on the offline flag
    model = build_detector(cfg.model, tmp_path)._build(["signature"])
    assert isinstance(model, transformers.DetrForObjectDetection)
    assert model.config.num_labels == 1 and model.class_labels_classifier.out_features == 2


def test_transformers_early_stopping_on_the_monitored_metric(tmp_path):
    """With lr=0 nothing improves, so patience=1 stops after the second evaluation."""
    from evaluation.run import validator as make_validator

    cfg = compose_cfg(
        "train",
        [
            "model=debug/detr",
            *HF_TINY,
            "train.max_steps=null",
            "train.epochs=5",
            "train.lr=0",
            "train.lr_backbone=0",
            "train.patience=1",
            "train.monitor=val/mAP50",
        ],
        tmp_path,
    )
    det = build_detector(cfg.model, Path(cfg.paths.run_dir), validator=make_validator(cfg.evaluation))
    out = det.train(cfg)
    assert out["train/epochs"] == 2
    assert (Path(cfg.paths.run_dir) / "weights" / "best" / "sigdet.json").is_file()


def test_transformers_rejects_unknown_train_args(tmp_path):
    """An ultralytics argument given to a transformers model: Hydra refuses it (the trainer's schema) and the CLI
    prints one line with the near names, exit code 2, before anything is written."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "model=debug/detr",
            *HF_TINY,
            "train.lr0=0.1",
            f"paths.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "\n" not in err and "train.lr0" in err and "did you mean ['lr'" in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("end2end", [False, True], ids=["one2many", "one2one"])
def test_yolo26_heads_decode_in_the_original_frame_and_export(end2end, tmp_path):
    """YOLO26 carries an NMS-free one-to-one head beside the one-to-many one; ultralytics 8.4 predicts with the
    one-to-many head and NMS unless the model is switched to end2end (nms=False), and so do we. Either way head_kind
    names the head the exported module keeps, decode puts the boxes in the page's own frame, and ONNX Runtime gives
    the module's raw output."""
    import onnxruntime as ort
    import torch

    from training.backends.yolo_processing import decode, export_module, head_kind, letterbox

    cfg = compose_cfg("train", ["model=yolo26n"], tmp_path)
    net = build_detector(cfg.model, tmp_path)._build().model
    net.end2end = end2end
    assert head_kind(net) == ("end2end" if end2end else "anchors")
    module = export_module(net)
    page = Image.new("RGB", (300, 500), "white")  # portrait: letterboxed with side padding
    x, meta = letterbox(page, 64)
    with torch.no_grad():
        raw = module(torch.from_numpy(x)[None]).numpy()
    assert raw.shape == (
        (1, 84, 6) if end2end else (1, 4 + 80, 84)
    )  # 84 anchors at 64 px: top-k keeps them all
    det = decode(raw[0], head_kind(net), meta, page.size, 64, conf=0.0, iou=0.7, max_det=300)
    assert len(det) > 0 and (det.boxes >= 0).all() and (det.boxes[:, [0, 2]] <= 300).all()
    assert (det.boxes[:, [1, 3]] <= 500).all()
    torch.onnx.export(
        module, (torch.from_numpy(x)[None],), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False
    )
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0]
    if end2end:  # top-k over near-tied random scores: compare what the decoder keeps, not the order
        np.testing.assert_allclose(np.sort(got[0, :, 4]), np.sort(raw[0, :, 4]), atol=1e-4)
    else:
        np.testing.assert_allclose(got, raw, atol=1e-3)


def test_rf_detr_refuses_an_input_size_its_windows_cannot_split(tmp_path):
    """RF-DETR's windowed backbone takes multiples of patch size x windows: any other size is one line naming the
    multiple and the nearest sizes, before anything runs (the debug model: 8 px patches, 2 windows)."""
    from training.backends.transformers import check_input_size
    from training.cli import ConfigError

    cfg = compose_cfg("train", ["model=debug/rf_detr", *HF_TINY], tmp_path)
    model = build_detector(cfg.model, tmp_path)._build(["signature"])
    check_input_size("rf_detr", model.config, 64)
    check_input_size("detr", model.config, 63)  # other families take any size
    with pytest.raises(ConfigError) as e:
        check_input_size("rf_detr", model.config, 60)
    assert "multiples of 16" in str(e.value) and "48 or 64" in str(e.value) and "\n" not in str(e.value)
