"""The contract every backend implements (:class:`Backend`, :class:`Detector`), the Detections it returns and
the :class:`ExportSpec` it hands to the export layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from training.cli import UserError


@dataclass
class Detections:
    """Detections of one image in its original pixel frame.

    ``boxes`` is ``(N, 4)`` absolute ``xyxy``; ``labels`` are class indices into the model's class names
    (the dataset's categories sorted by id).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError("boxes, scores and labels differ in length")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def above(self, conf: float) -> Detections:
        keep = self.scores >= conf
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


ImageInput = str | Path | np.ndarray


#: ``options["input_hw"]`` of an export whose height and width are symbolic (``python -m export input_hw=dynamic``)
# The score floor of every prediction that is scored: the COCO protocol ranks all boxes, so evaluation keeps them
# down to here (conf/evaluation/default.yaml `conf_min` is the setting; this is the default of the Python calls).
EVAL_CONF = 0.001
DYNAMIC_HW = "dynamic"


@runtime_checkable
class Predictor(Protocol):
    """Pages in, :class:`Detections` out: what the evaluator, prediction and the latency protocol run. A trained
    :class:`Detector` (PyTorch), an exported model (``training.inference.exported.ExportedModel``) and an
    ultralytics peer (``export.peers.UltralyticsPeer``) all satisfy it; tests/test_contract.py checks each."""

    #: the label of each class index
    class_names: list[str]

    @property
    def checkpoint(self) -> Path | None:
        """Where the model came from (a checkpoint, an exported file), None for one trained in memory."""

    @property
    def device(self) -> Any:
        """Where it runs (``cpu``, ``cuda:0``; a string or a ``torch.device``)."""

    def predict(
        self, images: Sequence[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        """Boxes per image (paths or RGB ``HxWx3`` uint8 arrays), in each image's original frame, scores >=
        ``conf``; ``imgsz``: the network input (None: the model's own)."""

    def benchmark_forward(self, imgsz: int | None = None) -> Callable[[], Any]:
        """The network alone on one preprocessed page, as a closure the latency protocol times (model-only)."""


def is_dynamic_hw(input_hw) -> bool:
    """Whether an ``input_hw`` setting (None, ``[h, w]`` or a string) asks for a dynamic input."""
    return isinstance(input_hw, str) and input_hw == DYNAMIC_HW


@dataclass
class ExportSpec:
    """What the export layer needs from a loaded model, given by :meth:`Backend.export_spec`.

    ``options`` is JSON (saved in the export's ``sigdet_export.json``): everything the backend's
    :meth:`~Backend.preprocess` / :meth:`~Backend.postprocess` need, so an exported model runs without the
    checkpoint. ``int8`` holds quantization hints for NNCF (``model_type``, ``ignored_patterns``,
    ``ignored_types``), plain data so that this layer does not import NNCF.
    """

    kind: str  # the registry name of the backend (training.backends.BACKENDS)
    imgsz: int
    class_names: list[str]
    input_names: list[str]
    output_names: list[str]
    options: dict = field(default_factory=dict)
    module: Any = None  # the traceable torch module (CPU, eval mode): the reference of every parity check
    source: str = ""  # the checkpoint it came from
    int8: dict = field(default_factory=dict)


class Trainer(ABC):
    """Training apart from prediction: trains the model of a :class:`Backend` (``detector``), reaching its state
    through it (``self.det.model``, ``self.det.run_dir``, ...)."""

    def __init__(self, detector: Backend):
        self.det = detector

    @abstractmethod
    def train(self, cfg) -> dict[str, float]:
        """Train on ``cfg.data`` with ``cfg.train``; return final training-side metrics (namespaced keys), the
        trained model left loaded in the detector (its checkpoint set)."""


class lazy_class:  # noqa: N801 (used as a class attribute, read as the class it names)
    """A class attribute naming a class as ``"module:Class"``, imported the first time it is read."""

    def __init__(self, ref: str):
        self.ref = ref

    def __get__(self, obj, owner=None) -> type:
        import importlib

        module, name = self.ref.split(":")
        return getattr(importlib.import_module(module), name)


class Backend(ABC):
    """What the trainer, evaluator and exporter rely on. One subclass per library, registered in
    ``training.backends.BACKENDS`` under its :attr:`name`.

    Args:
        model_cfg: the ``model:`` config group (``backend``, ``name``, weights / architecture, ...).
        run_dir: where this run writes weights and artefacts.
        tracker: experiment tracker (``training.tracking``) for per-epoch logs.

    ``validator`` (set by ``build_detector``) is the shared evaluator's per-epoch metric function, injected so
    that backends with their own loop validate with the same metric definitions without importing
    ``evaluation``.

    Export goes through three public pieces: :meth:`export_spec` (the traceable module and its inputs and
    outputs), and the static :meth:`preprocess` / :meth:`postprocess` that every runtime shares.
    """

    name: ClassVar[str] = ""
    #: what :meth:`train` runs (a :class:`Trainer` over this backend), given as :func:`lazy_class` so that
    #: importing a backend to load or predict does not import its training
    trainer: ClassVar[type[Trainer]]
    is_detector: ClassVar[bool] = True
    #: whether an export may take a rectangular input (``options["input_hw"]``: a fixed ``[h, w]``, or
    #: :data:`DYNAMIC_HW`, each page its own rectangle)
    rect_inputs: ClassVar[bool] = False
    #: whether it trains under ``torchrun`` / ``accelerate launch`` (several processes; training.train checks)
    distributed: ClassVar[bool] = False

    def __init__(self, model_cfg, run_dir: str | Path, tracker=None):
        self.model_cfg = model_cfg
        # a detector's NMS IoU / max detections (conf/decode/default.yaml, this backend's entry)
        self.decode = dict(model_cfg.decode) if self.is_detector else {}
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.class_names: list[str] = []
        self.validator = None
        self.model = None  # the loaded (or trained) model
        self._checkpoint: Path | None = None

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, decode=None, device: str | None = None, run_dir: str | Path = "."
    ):
        """A backend instance holding ``checkpoint``; ``decode``: a detector's entry of conf/decode (or the
        options an export recorded); ``device``: where to put it (None: the backend's choice)."""
        from omegaconf import OmegaConf

        inst = cls(
            OmegaConf.create({"backend": cls.name, "name": "inference", "decode": decode}), run_dir, None
        )
        inst.load(checkpoint, device=device)
        return inst

    @classmethod
    def owns(cls, path: Path) -> bool:
        """Whether ``path`` is a checkpoint of this backend, decided without executing anything in it."""
        return False

    def train(self, cfg) -> dict[str, float]:
        """Train on ``cfg.data`` with ``cfg.train``; return final training-side metrics (namespaced keys). The
        trained model is left loaded (:attr:`checkpoint` set). The work is this backend's :attr:`trainer`'s."""
        return self.trainer(self).train(cfg)

    @abstractmethod
    def load(self, checkpoint: str | Path, device: str | None = None) -> None:
        """Load weights from a checkpoint written by ``train``; ``device`` None lets the backend choose."""

    @property
    def checkpoint(self) -> Path | None:
        """Best checkpoint of the last training run (or the loaded one)."""
        return self._checkpoint

    def _require(self):
        """The loaded model; a :class:`UserError` when there is none yet."""
        if self.model is None:
            raise UserError("no model loaded: train first or load a checkpoint")
        return self.model

    def num_parameters(self) -> int:
        """Parameter count of the loaded model."""
        return sum(p.numel() for p in self._require().parameters())

    @abstractmethod
    def benchmark_forward(self, imgsz: int | None = None):
        """Zero-argument callable running the loaded model alone on one preprocessed image (for latency)."""

    @staticmethod
    def _timed(module, *args, **kwargs):
        """What :meth:`benchmark_forward` returns: ``module(*args, **kwargs)`` without autograd, as a closure that
        waits for the GPU (``torch.cuda.synchronize``) when its inputs are on CUDA, so that a timing covers the
        kernels, not their launch. Its ``device`` attribute names where it runs."""
        import torch

        cuda = any(getattr(a, "is_cuda", False) for a in (*args, *kwargs.values()))

        @torch.inference_mode()
        def run():
            module(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()

        run.device = "cuda" if cuda else "cpu"
        return run

    @abstractmethod
    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        """The loaded model as the export layer needs it; ``dynamic`` makes the batch axis symbolic."""

    @staticmethod
    @abstractmethod
    def preprocess(image, imgsz: int, options: dict) -> tuple[dict[str, np.ndarray], tuple]:
        """One RGB PIL image -> the named batch-1 input arrays of the exported graph, and what decoding needs."""

    @staticmethod
    @abstractmethod
    def postprocess(
        outputs: list[np.ndarray], ctx: tuple, imgsz: int, options: dict, conf: float = EVAL_CONF
    ):
        """Raw outputs of one image -> :class:`Detections` in its original frame (or class probabilities)."""

    @staticmethod
    def in_graph_preprocessing(options: dict) -> dict | None:
        """What an OpenVINO graph can take over from :meth:`preprocess` (its PrePostProcessor): the uint8
        ``1xHxWx3`` page of :meth:`preprocess_u8` converted to float, ``(x - mean) / scale`` per RGB channel,
        laid out NCHW; ``{"mean": [r, g, b], "scale": [r, g, b]}``, or None where it stays outside the graph."""
        return None

    @staticmethod
    def preprocess_u8(image, imgsz: int, options: dict) -> tuple[dict[str, np.ndarray], tuple]:
        """:meth:`preprocess` up to, not including, the float conversion (see :meth:`in_graph_preprocessing`);
        ``image`` is an RGB PIL image or an ``HxWx3`` uint8 RGB array (taken as is, without a PIL round trip)."""
        raise NotImplementedError("this backend's pre-processing cannot move into the graph")

    @staticmethod
    def example_inputs(imgsz: int, options: dict, batch: int = 1) -> tuple:
        """Tracing inputs of the exported graph."""
        import torch

        return (torch.rand(batch, 3, imgsz, imgsz),)


class Detector(Backend):
    """A backend whose model finds boxes: :meth:`predict` returns :class:`Detections`.

    Export is not a method of its own: ``python -m export`` (export/) converts what :meth:`export_spec` gives,
    for every backend alike, with a parity check per artefact.
    """

    @abstractmethod
    def predict(
        self, images: list[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        """Predict on file paths or RGB ``HxWx3`` uint8 arrays; boxes in each image's original frame."""

    def library_metrics(
        self, split: str, imgsz: int | None, yolo_data: Callable[[], Path]
    ) -> dict[str, float]:
        """The library's own validation metrics of ``split`` (keys prefixed ``<library>/<split>/``), reported beside
        the shared evaluator's and never mixed with them; {} for a library without its own (the default).
        ``yolo_data``: builds (or reuses) the YOLO copy of the data and returns its ``data.yaml``."""
        return {}

    #: :meth:`set_half` was called: the network holds FP16 weights and is fed FP16 inputs
    half: bool = False

    def set_half(self) -> None:
        """Run :meth:`predict` in half precision (FP16 weights and float inputs; meant for GPUs, where it is
        faster); the decoding stays in FP32."""
        raise NotImplementedError(f"{type(self).__name__} has no half-precision inference")

    def _predict_each(self, net, device, images: list[ImageInput], imgsz: int, options: dict, conf: float):
        """Image by image: :meth:`preprocess` -> ``net`` (the module an export traces, fed the input arrays in
        order) -> :meth:`postprocess`, the path every exported runtime takes too."""
        import torch

        from training.data.images import as_pil

        half = torch.float16 if self.half else None
        out: list[Detections] = []
        for img in images:
            feeds, ctx = self.preprocess(as_pil(img), imgsz, options)
            with torch.inference_mode():
                raw = net(
                    *(
                        torch.from_numpy(v).to(device, dtype=half if v.dtype.kind == "f" else None)
                        for v in feeds.values()
                    )
                )
            raw = raw if isinstance(raw, tuple) else (raw,)
            out.append(self.postprocess([r.float().cpu().numpy() for r in raw], ctx, imgsz, options, conf))
        return out
