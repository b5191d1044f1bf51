"""Ultralytics backend: YOLOv8 / YOLO11 / YOLOv10 / RT-DETR behind the Detector contract (loading, prediction,
export); its training is :class:`~training.backends.ultralytics_training.UltralyticsTrainer`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from training.backends.base import (
    EVAL_CONF,
    Detections,
    Detector,
    ExportSpec,
    ImageInput,
    is_dynamic_hw,
    lazy_class,
)
from training.cli import ConfigError, OfflineError, UserError, first_line

ASSET_URL = "https://github.com/ultralytics/assets/releases"


def load_yolo(path: str | Path, what: str = "checkpoint"):
    """An ultralytics model from a ``.pt`` through the safe path (training/checkpoints.py); one line on failure."""
    from training.compat.ultralytics import safe_load

    with safe_load():
        return _load_yolo(path, what)


def _load_yolo(path: str | Path, what: str):
    from training.checkpoints import check_ultralytics_checkpoint, load_weights, names_ultralytics_classes
    from training.compat.ultralytics import YOLO

    path = check_ultralytics_checkpoint(path)
    if not names_ultralytics_classes(path):
        # plain tensors / dicts: a state dict of another model (the region classifier's, a transformers one...)
        from training.classifier.model import is_classifier_checkpoint

        obj = load_weights(path, what)
        kind = (
            "the region classifier's checkpoint (run it with python -m training.classifier.infer, or export it with python -m export)"
            if is_classifier_checkpoint(obj)
            else f"a {type(obj).__name__} without an ultralytics model"
        )
        raise UserError(f"{path}: not an ultralytics {what}: it holds {kind}")
    try:
        return YOLO(str(path))  # YOLO() loads RT-DETR weights too (it only cannot build RT-DETR from YAML)
    except (TypeError, ValueError, KeyError, AttributeError, ModuleNotFoundError) as e:
        # ultralytics' restricted loader raises TypeError for files outside its format
        raise UserError(f"{path}: not a loadable ultralytics {what} ({first_line(e, 200)})") from None


def resolve_weights(weights: str) -> str:
    """A local file, or an ultralytics asset name fetched when online; offline, one clear error."""
    from training.compat.ultralytics import SETTINGS, is_online

    p = Path(weights).expanduser()
    if p.is_file():
        return str(p)
    if p.parent != Path(".") or p.suffix != ".pt":
        raise UserError(f"model.weights: file {p} not found")
    cached = Path(SETTINGS["weights_dir"]) / p.name
    if cached.is_file():
        return str(cached)
    if os.environ.get("YOLO_OFFLINE") or not is_online():
        raise OfflineError(
            f"model.weights={weights}: not found locally and no network; download {p.name} from {ASSET_URL} "
            f"and set model.weights=/path/to/{p.name} (or set model.weights=null to train from scratch)"
        )
    try:
        from training.compat.ultralytics import attempt_download_asset

        return attempt_download_asset(p.name)
    except Exception as e:
        raise OfflineError(
            f"model.weights={weights}: download failed ({e.__class__.__name__}); get it from {ASSET_URL}"
        ) from None


def _metric_key(k: str) -> str:
    # 'metrics/mAP50-95(B)' -> 'mAP50-95'; 'val/box_loss' stays
    return k.replace("metrics/", "").replace("(B)", "")


def _val_metrics(prefix: str, metrics: dict) -> dict[str, float]:
    """ultralytics' ``metrics/...`` entries as ``<prefix><name>`` floats (losses and fitness left out)."""
    return {f"{prefix}{_metric_key(k)}": float(v) for k, v in metrics.items() if k.startswith("metrics/")}


class UltralyticsDetector(Detector):
    """YOLO-family and RT-DETR models through ``ultralytics``."""

    name = "ultralytics"
    trainer = lazy_class("training.backends.ultralytics_training:UltralyticsTrainer")
    _device: str | None = None  # load()'s device: where _net() puts the network
    _net_of = None  # the loaded model _net() last prepared

    @classmethod
    def owns(cls, path: Path) -> bool:
        """A ``.pt`` whose pickle names ultralytics classes (read without unpickling; a file naming anything but
        model classes and plain data is refused here, whatever backend it was meant for)."""
        from training.checkpoints import check_ultralytics_checkpoint, names_ultralytics_classes

        return path.is_file() and names_ultralytics_classes(check_ultralytics_checkpoint(path))

    # -- building -------------------------------------------------------------------------------------
    def _build(self):
        from training.compat.ultralytics import safe_load

        with safe_load():  # weights load restricted, model YAMLs are parsed without eval() too
            return self._build_model()

    def _build_model(self):
        from training.compat.ultralytics import RTDETR, YOLO

        weights, arch = self.model_cfg.weights, self.model_cfg.arch
        if weights:
            model = load_yolo(resolve_weights(str(weights)), "weights file (model.weights)")
            held = str((getattr(model.model, "yaml", None) or {}).get("yaml_file") or "")
            if arch and held and Path(held).stem != Path(str(arch)).stem:
                # training a yolov10n run from yolov8n weights would silently train a yolov8n
                raise ConfigError(
                    f"model.weights={weights} holds a {Path(held).stem} but model={self.model_cfg.name} is a "
                    f"{Path(str(arch)).stem}; choose the matching model=..., or model.weights=null for random init"
                )
            return model
        if not arch:
            raise ConfigError(f"model '{self.model_cfg.name}': set model.arch (a YAML) or model.weights")
        # YOLO() cannot build RT-DETR from its YAML (it can load its weights)
        build = RTDETR if "rtdetr" in Path(str(arch)).stem else YOLO
        try:
            return build(str(arch))  # random init from the architecture YAML
        except (
            FileNotFoundError,
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            IndexError,
            SyntaxError,
        ) as e:
            # a YAML of one's own (or from others) that ultralytics cannot build, e.g. a refused activation
            raise ConfigError(
                f"model.arch={arch}: not an architecture ultralytics can build ({e.__class__.__name__}: "
                f"{first_line(e, 160)})"
            ) from None

    # -- inference ------------------------------------------------------------------------------------
    def load(self, checkpoint, device: str | None = None) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise UserError(f"checkpoint {checkpoint} not found")
        self.model = load_yolo(checkpoint)
        self._checkpoint = checkpoint
        self._device = device
        names = self.model.names
        self.class_names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)

    def _net(self):
        """The network in the state ultralytics' exporter puts it in (fused, head returning one raw tensor),
        cached per loaded model: the same module an export traces, so both decode the same output."""
        from training.backends.yolo_processing import export_module, head_kind

        model = self._require()
        if self._net_of is not model:
            self._infer_net = export_module(model.model).to(self.device)
            if self.half:
                self._infer_net.half()
            self._head = head_kind(model.model)
            self._net_of = model
        return self._infer_net

    def set_half(self) -> None:
        self.half = True
        self._net_of = None  # rebuilt in FP16 by the next _net()

    @property
    def device(self) -> str:
        """Where :meth:`predict` runs: the device :meth:`_net` puts the network on (load()'s, else CUDA when there
        is one). ultralytics' own model object stays on the CPU, so its ``device`` does not say."""
        from training.hardware import resolve_device

        return str(resolve_device(self._device))

    def _imgsz(self, imgsz: int | None) -> int:
        if imgsz:
            return int(imgsz)
        args = getattr(self._require(), "ckpt", None) or {}
        return int((args.get("train_args") or {}).get("imgsz", 640) or 640)

    def _options(self, head: str) -> dict:
        """What :meth:`postprocess` reads: the head kind and this run's decoding (conf/decode)."""
        return {"head": head, "iou": self.decode["iou"], "max_det": self.decode["max_det"]}

    def predict(
        self,
        images: list[ImageInput],
        conf: float = EVAL_CONF,
        imgsz: int | None = None,
    ) -> list[Detections]:
        """Square letterbox -> network -> decode, all from ``yolo_processing`` (shared with exported models, so
        that one image gives the same boxes in PyTorch, ONNX Runtime, OpenVINO and TensorRT)."""
        net = self._net()
        options = self._options(self._head)
        return self._predict_each(
            net, next(net.parameters()).device, images, self._imgsz(imgsz), options, conf
        )

    def benchmark_forward(self, imgsz: int | None = None):
        import torch

        net = self._net()
        size = self._imgsz(imgsz)
        return self._timed(net, torch.zeros(1, 3, size, size, device=next(net.parameters()).device))

    def library_metrics(
        self, split: str, imgsz: int | None, yolo_data: Callable[[], Path], batch: int = 8
    ) -> dict[str, float]:
        """ultralytics' own validation metrics for ``split``, keys prefixed ``ultralytics/<split>/``."""
        kwargs = {"data": str(yolo_data()), "split": split, "batch": batch, "plots": False, "verbose": False}
        kwargs.update(project=str(self.run_dir.resolve()), name="ultralytics_val", exist_ok=True)
        if imgsz:
            kwargs["imgsz"] = int(imgsz)
        res = self._require().val(**kwargs)
        shutil.rmtree(self.run_dir / "ultralytics_val", ignore_errors=True)
        return _val_metrics(f"ultralytics/{split}/", res.results_dict)

    # -- export (the contract of training.backends.base.Backend) -----------------------------------------
    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        from training.backends.yolo_processing import export_module, head_kind

        net = self._require().model.cpu()
        head = len(list(net.model)) - 1  # model.<last>
        ops = ("Add", "Sub", "Mul", "Div", "Concat", "Sigmoid", "Softmax")
        return ExportSpec(
            self.name,
            self._imgsz(imgsz),
            list(self.class_names),
            ["images"],
            ["output0"],
            self._options(head_kind(net)),
            export_module(net, dynamic=dynamic),
            str(self._checkpoint or ""),
            # the box decoding of YOLO heads stays FP32: INT8 there costs far more mAP than it saves time
            # (the scope ultralytics' own OpenVINO INT8 export ignores)
            int8={
                "ignored_patterns": [f".*model\\.{head}/.*{op}.*" for op in ops]
                + [f".*model\\.{head}/dfl.*"],
                "ignored_types": ["Sigmoid"],
            },
        )

    rect_inputs = True

    @staticmethod
    def in_graph_preprocessing(options: dict) -> dict:
        return {"mean": [0.0, 0.0, 0.0], "scale": [255.0, 255.0, 255.0]}  # the letterboxed page / 255

    @staticmethod
    def _input_hw(imgsz: int, options: dict) -> tuple[int, int]:
        """The network input (h, w): ``imgsz`` square, or the export's rectangular ``options["input_hw"]``; for a
        dynamic input (``"dynamic"``) the largest one, the square (each page's own is :meth:`_letterbox`'s)."""
        hw = options.get("input_hw")
        hw = (imgsz, imgsz) if not hw or is_dynamic_hw(hw) else hw
        return int(hw[0]), int(hw[1])

    @staticmethod
    def _letterbox(image, imgsz: int, options: dict, as_u8: bool):
        """The page letterboxed into the export's input: a fixed square or rectangle, or, with a dynamic input,
        its own rectangle padded to the heads' largest stride (32); the canvas is ``... x H x W`` either way."""
        from training.backends.yolo_processing import letterbox, letterbox_u8

        stride = 32 if is_dynamic_hw(options.get("input_hw")) else 0
        fn = letterbox_u8 if as_u8 else letterbox
        return fn(image, UltralyticsDetector._input_hw(imgsz, options), stride)

    @staticmethod
    def preprocess(image, imgsz: int, options: dict):
        x, meta = UltralyticsDetector._letterbox(image, imgsz, options, as_u8=False)
        return {"images": x[None]}, (meta, image.size, x.shape[1:])

    @staticmethod
    def preprocess_u8(image, imgsz: int, options: dict):
        canvas, meta = UltralyticsDetector._letterbox(image, imgsz, options, as_u8=True)
        size = (image.shape[1], image.shape[0]) if hasattr(image, "shape") else image.size  # array or PIL
        return {"images": canvas[None]}, (meta, size, canvas.shape[:2])

    @staticmethod
    def example_inputs(imgsz: int, options: dict, batch: int = 1) -> tuple:
        import torch

        return (torch.rand(batch, 3, *UltralyticsDetector._input_hw(imgsz, options)),)

    @staticmethod
    def postprocess(outputs, ctx, imgsz: int, options: dict, conf: float = EVAL_CONF):
        from training.backends.yolo_processing import decode

        meta, size, input_hw = ctx  # input_hw: this page's network input (h, w)
        return decode(
            outputs[0][0],
            options["head"],
            meta,
            size,
            tuple(input_hw),
            conf,
            float(options["iou"]),
            int(options["max_det"]),
        )
