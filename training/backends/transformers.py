"""Transformers backend: DETR, Conditional-DETR, YOLOS, RT-DETRv2, D-FINE, DEIMv2 and RF-DETR behind the Detector
contract (:data:`FAMILIES`).

Weights come from a hub id or a local directory (``from_pretrained`` with a new head for our classes), or the
model is built from config with random init and a locally built backbone config (ResNet for the DETR families,
``model.backbone.model_type`` for the others): no network at all.
This module loads, predicts and exports; training (``accelerate``, one process or DDP) is
:class:`~training.backends.transformers_training.TransformersTrainer`.

A run folder (``weights/best``) is also a transformers model folder: ``config.json`` (labels = our class names),
``model.safetensors`` and ``preprocessor_config.json`` (the family's image processor set to preprocess as we do),
so ``AutoImageProcessor``, ``AutoModelForObjectDetection`` and ``pipeline("object-detection")`` load it as is
and find the boxes we find (tests/test_hf_interop.py). Folders saved before the processor file existed get it
from ``python -m evaluation.publish``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from training.backends.base import EVAL_CONF, Detections, Detector, ExportSpec, ImageInput, lazy_class
from training.backends.hf_processing import (
    GraphWrapper,
    decode,
    preprocess_image,
    processor_kwargs,
)
from training.cli import ConfigError, DataError, OfflineError, UserError, first_line
from training.compat.transformers import fixed_position_embeddings
from training.fileio import swap_in_dir, writing
from training.hardware import resolve_device


@dataclass(frozen=True)
class HFFamily:
    """One transformers detector family: its classes (looked up in ``transformers`` by name) and how its inputs and
    outputs are read (the options every runtime's pre/post-processing gets, training/backends/hf_processing.py)."""

    config: str  # config class
    model: str  # model class (``...ForObjectDetection``)
    processor: str  # image processor written beside the weights, configured as hf_processing preprocesses
    score_mode: str  # softmax (a no-object class) | sigmoid (focal: top-k over queries x classes)
    mask: bool  # the forward takes a pixel_mask
    resize: str  # hf_processing.RESIZES: letterbox (aspect kept, padded) | stretch (to the square, upstream's way)
    normalize: bool  # inputs standardised with ImageNet statistics (as the family's pretraining saw them)
    # queries picked by top-k over the encoder's scores (two-stage): ties broken by index, as an export does
    ordered_topk: bool = False
    # the input size must be a multiple of backbone patch size x windows (RF-DETR's windowed DINOv2)
    windowed: bool = False


# family (model.family) -> what the backend needs of it; boxes are cxcywh normalised to the input (BOX_FRAME image)
_DETR = {"mask": True, "resize": "letterbox", "normalize": True}
# the RT-DETR lineage: [0, 1] inputs stretched to the square, no normalisation (PekingU/rtdetr_v2_*,
# ustc-community/dfine-*: RTDetrImageProcessor with do_normalize false; DEIMv2's auto image processor is the same);
# sigmoid (focal) scores; queries chosen by top-k over the encoder's proposals
_RT_DETR = {"mask": False, "resize": "stretch", "normalize": False, "ordered_topk": True}
FAMILIES = {
    "detr": HFFamily("DetrConfig", "DetrForObjectDetection", "DetrImageProcessor", "softmax", **_DETR),
    "conditional_detr": HFFamily(
        "ConditionalDetrConfig",
        "ConditionalDetrForObjectDetection",
        "ConditionalDetrImageProcessor",
        "sigmoid",
        **_DETR,
    ),
    "yolos": HFFamily(
        "YolosConfig", "YolosForObjectDetection", "YolosImageProcessor", "softmax", **{**_DETR, "mask": False}
    ),
    "rt_detr_v2": HFFamily(
        "RTDetrV2Config", "RTDetrV2ForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    "d_fine": HFFamily(
        "DFineConfig", "DFineForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    "deimv2": HFFamily(
        "Deimv2Config", "Deimv2ForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    # windowed DINOv2 backbone: ImageNet statistics, stretched to the square (Roboflow/rf-detr-*: size {height, width})
    "rf_detr": HFFamily(
        "RfDetrConfig",
        "RfDetrForObjectDetection",
        "RfDetrImageProcessor",
        "sigmoid",
        **{**_RT_DETR, "normalize": True, "windowed": True},
    ),
}

META = "sigdet.json"
STATE = "trainer_state.pt"
# the box frame (hf_processing.BOX_FRAMES) of new runs; a sigdet.json without one is from before it: canvas
BOX_FRAME = "image"


def _family(name: str):
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r}: valid families are {sorted(FAMILIES)}")
    import transformers

    transformers.logging.disable_progress_bar()  # per-shard progress bars on every save / load drown the epoch logs
    fam = FAMILIES[name]
    return _hf_class(name, fam.config), _hf_class(name, fam.model), fam.score_mode, fam.mask


def _hf_class(family: str, name: str):
    """A transformers class by name; one line when the installed release predates it (a family added to
    transformers after pyproject.toml's lower bound, or an environment that ignored that bound)."""
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError:
        raise ConfigError(
            f"model.family={family}: transformers {transformers.__version__} has no {name}; this family needs a "
            "newer release: pip install -U 'transformers<6'"
        ) from None


def backbone_config(values: dict):
    """``model.backbone`` -> the transformers backbone config: a ``ResNetConfig`` (the DETR families' backbone) unless
    it names its ``model_type`` (``hgnet_v2``, ``rt_detr_resnet``, ``rf_detr_dinov2``, ...), which transformers'
    config registry then builds (``CONFIG_MAPPING``), locally."""
    values = dict(values)
    if "model_type" in values:
        from transformers import CONFIG_MAPPING

        kind = values.pop("model_type")
        if kind not in CONFIG_MAPPING:
            raise ConfigError(f"model.backbone.model_type={kind!r}: not a transformers config type")
        return CONFIG_MAPPING[kind](**values)
    from transformers import ResNetConfig

    return ResNetConfig(**values)


def check_input_size(family: str, config, imgsz: int) -> None:
    """Refuse an input size the family's backbone cannot split: RF-DETR's windowed DINOv2 needs a multiple of
    ``patch_size x num_windows`` (the published models: 16 x 2 = 32, or 14 x 4 = 56 for rf-detr-base).

    Raises:
        ConfigError: one line naming the size, the multiple and the nearest valid sizes.
    """
    if not FAMILIES[family].windowed:
        return
    bb = config.backbone_config
    patch = bb.patch_size[0] if isinstance(bb.patch_size, (list, tuple)) else bb.patch_size
    step = int(patch) * int(getattr(bb, "num_windows", 1) or 1)
    if imgsz % step:
        lo, hi = imgsz // step * step, (imgsz // step + 1) * step
        raise ConfigError(
            f"imgsz={imgsz}: a {family} model with patch size {patch} and {step // int(patch)} windows takes "
            f"multiples of {step} (e.g. train.imgsz={lo or hi} or {hi})"
        )


def image_processor(family: str, imgsz: int):
    """The family's transformers image processor, built locally (no download), set to preprocess as
    :func:`~training.backends.hf_processing.preprocess_image` does for that family."""
    _family(family)
    fam = FAMILIES[family]
    return _hf_class(family, fam.processor)(**processor_kwargs(imgsz, fam.resize, fam.normalize))


def write_image_processor(folder: str | Path) -> Path:
    """Write ``preprocessor_config.json`` into a run folder of this backend (from its ``sigdet.json``); returns it.

    Raises:
        UserError: ``folder`` holds no readable ``sigdet.json``.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    image_processor(str(meta["family"]), int(meta["imgsz"])).save_pretrained(folder)
    return folder / "preprocessor_config.json"


def _read_meta(folder: Path) -> dict:
    """A run folder's ``sigdet.json``; a :class:`UserError` naming the folder or the file when it is not one."""
    path = folder / META
    if not path.is_file():
        raise UserError(
            f"checkpoint {folder}: not a directory written by the transformers backend (no {META})"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"family", "imgsz", "class_names"} <= set(meta):
            raise ValueError("family, imgsz or class_names missing")
        imgsz, names = meta["imgsz"], meta["class_names"]
        if not isinstance(meta["family"], str) or meta["family"] not in FAMILIES:
            raise ValueError(f"family {meta['family']!r} is not one of {sorted(FAMILIES)}")
        if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz <= 0:
            raise ValueError(f"imgsz {imgsz!r} is not a positive integer")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names {names!r} is not a list of names")
        if not isinstance(meta.get("box_frame", "canvas"), str):
            raise ValueError(f"box_frame {meta['box_frame']!r} is not a name")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a {META} of the transformers backend ({first_line(e, 120)})") from None
    return meta


def _labels(names: list[str]) -> dict:
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


class TransformersDetector(Detector):
    """DETR-style detectors through ``transformers`` (:data:`FAMILIES`)."""

    name = "transformers"
    distributed = True  # trains under torchrun / accelerate launch (training.train checks)
    trainer = lazy_class("training.backends.transformers_training:TransformersTrainer")

    def __init__(self, model_cfg, run_dir, tracker=None):
        super().__init__(model_cfg, run_dir, tracker)
        # None when built to load a checkpoint (from_checkpoint): load() reads family and size from it
        self.family = model_cfg.get("family")
        if self.family:
            _family(self.family)  # an unknown family fails here, before anything is built
        self.imgsz: int | None = None
        self.box_frame = BOX_FRAME  # a loaded checkpoint's own (load)
        self.device = torch.device("cpu")
        self.train_device: torch.device | None = None  # set by training: load() then keeps the model there

    @property
    def score_mode(self) -> str | None:
        """How the family scores a query: ``softmax`` (with a no-object class) or ``sigmoid``."""
        return FAMILIES[self.family].score_mode if self.family else None

    @property
    def use_mask(self) -> bool | None:
        """Whether the family's forward takes a ``pixel_mask``."""
        return FAMILIES[self.family].mask if self.family else None

    @classmethod
    def owns(cls, path: Path) -> bool:
        """A run folder (``from_pretrained`` layout plus our ``sigdet.json``)."""
        return path.is_dir()

    # -- building ----------------------------------------------------------------------------------
    def _build(self, class_names: list[str]):
        cfg_cls, model_cls, _, _ = _family(self.family)
        weights = self.model_cfg.get("weights")
        if weights:
            return self._from_pretrained(model_cls, str(weights), class_names)
        kwargs = OmegaConf.to_container(self.model_cfg.get("config") or {}, resolve=True)
        if self.model_cfg.get("backbone"):
            kwargs["backbone_config"] = backbone_config(
                OmegaConf.to_container(self.model_cfg.backbone, resolve=True)
            )
        return model_cls(cfg_cls(**kwargs, **_labels(class_names)))

    @staticmethod
    def _from_pretrained(model_cls, source: str, class_names: list[str]):
        local = Path(source).expanduser()
        try:
            return model_cls.from_pretrained(
                str(local) if local.exists() else source, ignore_mismatched_sizes=True, **_labels(class_names)
            )
        except OSError as e:
            if local.exists():
                raise UserError(
                    f"model.weights={source}: not a loadable {model_cls.__name__} directory ({first_line(e, 160)})"
                ) from None
            raise OfflineError(
                f"model.weights={source}: not reachable ({e.__class__.__name__}); on a machine with access run "
                f"`hf download {source} --local-dir DIR` and set model.weights=DIR "
                f"(or model.weights=null to build it from config with random init)"
            ) from None

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, folder: Path, extra_state: dict | None = None) -> None:
        """The loaded model as a run folder (what :meth:`load` reads); ``extra_state``: a trainer's resume state."""
        self.model.config.id2label = dict(enumerate(self.class_names))  # what the pipeline's labels read
        self.model.config.label2id = {n: i for i, n in enumerate(self.class_names)}
        # written beside and swapped in: a full disk or a kill mid-save leaves the previous checkpoint whole
        part = folder.with_name(f".{folder.name}.part")
        shutil.rmtree(part, ignore_errors=True)
        try:
            with writing(part):
                self.model.save_pretrained(part)  # creates the folder
                meta = {
                    k: getattr(self, k) for k in ("family", "imgsz", "class_names", "score_mode", "box_frame")
                }
                (part / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
                image_processor(self.family, self.imgsz).save_pretrained(part)
                if extra_state is not None:
                    torch.save(extra_state, part / STATE)
            swap_in_dir(part, folder)
        finally:
            shutil.rmtree(part, ignore_errors=True)

    # -- inference ---------------------------------------------------------------------------------
    def load(self, checkpoint, device: str | None = None) -> None:
        path = Path(checkpoint)
        if path.is_dir() and not (path / META).is_file() and (path / "weights" / "best" / META).is_file():
            path = path / "weights" / "best"
        meta = _read_meta(path)
        self.family, self.imgsz, self.class_names = (
            meta["family"],
            int(meta["imgsz"]),
            list(meta["class_names"]),
        )
        self.box_frame = str(meta.get("box_frame", "canvas"))
        model_cls = _family(self.family)[1]
        # train.device decides for the run's own reloads
        self.device = self.train_device if device is None and self.train_device else resolve_device(device)
        try:  # safetensors only: a folder from others may hold a pickled pytorch_model.bin instead
            model = model_cls.from_pretrained(str(path), use_safetensors=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
            raise DataError(
                f"{path}: not a loadable {model_cls.__name__} run folder ({e.__class__.__name__}: {first_line(e, 160)})"
            ) from None
        self.model = model.to(self.device).eval()
        self._checkpoint = path

    def _options(self) -> dict:
        fam = FAMILIES[self.family]
        return {
            "score_mode": self.score_mode,
            "use_mask": bool(self.use_mask),
            "max_det": self.decode["max_det"],
            "box_frame": self.box_frame,
            "resize": fam.resize,
            "normalize": fam.normalize,
        }

    def set_half(self) -> None:
        self.half = True
        self._require().half()

    def predict(
        self, images: list[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        net = GraphWrapper(self._require().eval(), self.use_mask, FAMILIES[self.family].ordered_topk)
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, self.model.config, size)
        return self._predict_each(net, self.device, images, size, self._options(), conf)

    def benchmark_forward(self, imgsz: int | None = None):
        """A zero-argument callable running the model alone on one preprocessed image (latency protocol)."""
        model = self._require().eval()
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, model.config, size)
        kwargs = {"pixel_values": torch.zeros(1, 3, size, size, device=self.device)}
        if self.use_mask:
            kwargs["pixel_mask"] = torch.ones(1, size, size, dtype=torch.long, device=self.device)
        return self._timed(model, **kwargs)

    # -- export (the contract of training.backends.base.Backend) -----------------------------------------
    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        """The model (moved to the CPU, frozen) wrapped to return plain ``(logits, pred_boxes)`` tensors; traced at one
        fixed input size (RF-DETR's position embeddings a constant of the graph for that size:
        :func:`~training.compat.transformers.fixed_position_embeddings`)."""
        # frozen, as ultralytics' export module is: nothing traces or counts gradients of it (torch's FLOP counter
        # stumbles on RF-DETR's parameters passed to a layer as they are: a leaf that requires grad under no_grad)
        model = self._require().cpu().eval().requires_grad_(False)
        self.device = torch.device("cpu")
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, model.config, size)
        fixed_position_embeddings(model, size, size)
        inputs = ["pixel_values", "pixel_mask"] if self.use_mask else ["pixel_values"]
        return ExportSpec(
            self.name,
            size,
            list(self.class_names),
            inputs,
            ["logits", "pred_boxes"],
            self._options(),
            GraphWrapper(model, self.use_mask, FAMILIES[self.family].ordered_topk).eval(),
            str(self._checkpoint or ""),
            int8={"model_type": "transformer"},
        )

    @staticmethod
    def preprocess(image, imgsz: int, options: dict):
        # exports written before the families of the RT-DETR lineage: letterboxed and normalised
        pixels, mask, scale = preprocess_image(
            image, imgsz, options.get("resize", "letterbox"), options.get("normalize", True)
        )
        feeds = {"pixel_values": pixels[None].numpy()}
        if options.get("use_mask"):
            feeds["pixel_mask"] = mask[None].numpy().astype(np.int64)
        return feeds, (scale, image.size)

    @staticmethod
    def postprocess(outputs, ctx, imgsz: int, options: dict, conf: float = EVAL_CONF):
        scale, size = ctx
        return decode(
            torch.from_numpy(np.asarray(outputs[0][0])),
            torch.from_numpy(np.asarray(outputs[1][0])),
            scale,
            size,
            imgsz,
            options["score_mode"],
            conf,
            int(options["max_det"]),
            options.get("box_frame", "canvas"),  # exports written before the frame was recorded: canvas
        )

    @staticmethod
    def example_inputs(imgsz: int, options: dict, batch: int = 1) -> tuple:
        if options.get("use_mask"):
            return torch.rand(batch, 3, imgsz, imgsz), torch.ones(batch, imgsz, imgsz, dtype=torch.long)
        return (torch.rand(batch, 3, imgsz, imgsz),)
