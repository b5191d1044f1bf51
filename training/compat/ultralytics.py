"""ultralytics, as the project uses it: the one module that imports it, and every private name and patch of it.

The public names the rest of the project uses (``YOLO``, ``Detect``, ``DetectionTrainer``, ...) are re-exported
here and resolved on first use: importing this module does not import ultralytics (that takes seconds), so
``from training.compat.ultralytics import YOLO`` stays inside the functions that need it. Each private access and
patch below says why it exists and has a test in tests/test_compat.py that fails when ultralytics changes under
it; pyproject.toml bounds ultralytics to the releases those tests cover.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import types
from collections.abc import Callable, Iterator

from training.cli import DataError

# public name -> the ultralytics module it comes from (resolved by __getattr__, on first use)
EXPORTS = {
    "YOLO": "ultralytics",
    "RTDETR": "ultralytics",
    "DEFAULT_CFG_DICT": "ultralytics.cfg",
    "check_cfg": "ultralytics.cfg",
    "SETTINGS": "ultralytics.utils",
    "is_online": "ultralytics.utils",
    "attempt_download_asset": "ultralytics.utils.downloads",
    "Instances": "ultralytics.utils.instance",
    "imread": "ultralytics.utils.patches",
    "Detect": "ultralytics.nn.modules.head",
    "RTDETRDecoder": "ultralytics.nn.modules.head",
    "C2f": "ultralytics.nn.modules.block",
    "DetectionTrainer": "ultralytics.models.yolo.detect",
    "RTDETRTrainer": "ultralytics.models.rtdetr.train",
}
# the ultralytics trainers ours extend (training/backends/ultralytics.py), by their names here
TRAINERS = ("DetectionTrainer", "RTDETRTrainer")


def __getattr__(name: str):
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


# -- the restricted checkpoint loader ------------------------------------------------------------------------
SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"
ULTRALYTICS_MIN = "8.4.164"  # the first release tests/test_compat.py passes on (pyproject.toml)
_lock = threading.Lock()
_active = 0  # safe_load() contexts open in this process
_restored: list = []  # (module, ultralytics' own torch_load) for each module safe_load() rebound


def _restricted_loader_on() -> None:
    """ultralytics' own switch for its restricted loader (``ULTRALYTICS_SAFE_LOAD``: ``weights_only=True`` plus an
    allow-list of its model classes; model YAMLs parsed without ``eval``), on for this process and its children
    (DDP workers inherit the environment). ultralytics reads the variable once, at import, into module constants:
    set both. Left on once on: it only ever restricts, and switching it off would reopen unrestricted loads of
    files from others. Private: ``tasks._SafeLoad`` (its ``SUPPORTED`` says whether this torch can restrict); an
    ultralytics without it cannot load a checkpoint safely, so it is refused rather than used."""
    os.environ[SAFE_LOAD_ENV] = "true"  # "true" is what every release with the loader accepts
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as uutils

    safe = getattr(tasks, "_SafeLoad", None)
    if safe is None or not getattr(safe, "SUPPORTED", False):
        import torch
        import ultralytics

        raise DataError(
            f"ultralytics {ultralytics.__version__} / torch {torch.__version__} cannot load checkpoints without "
            f"unpickling arbitrary code; install ultralytics>={ULTRALYTICS_MIN} and torch>=2.6"
        )
    tasks.SAFE_LOAD = True
    uutils.SAFE_LOAD = True


def _restrict_torch_load() -> None:
    """Patch: make every load through ultralytics' ``torch_load`` a restricted one (``weights_only=True`` with its
    allow-list of model classes, registered by the private ``tasks._SafeLoad.loading``; its ``getattr`` stand-in
    reaches only attributes of modules). Left alone, that function unpickles without restriction whatever
    ``ULTRALYTICS_SAFE_LOAD`` says (ultralytics/utils/patches.py ``torch_load`` defaults to ``weights_only=False``),
    and ultralytics' trainer calls it on the run's own files (``strip_optimizer`` of last.pt / best.pt at the end of
    a training, ``check_resume``'s read of last.pt). Rebound where ultralytics' modules imported it by name; a
    genuine checkpoint loads the same."""
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils.patches as patches
    import ultralytics.utils.torch_utils as torch_utils

    original = patches.torch_load

    @functools.wraps(original)
    def torch_load(f, *args, **kwargs):
        if kwargs.get("weights_only") is True:  # ultralytics' own restricted path, already set up
            return original(f, *args, **kwargs)
        kwargs["weights_only"] = True  # never an unrestricted unpickle, whatever the caller asked
        if not isinstance(f, (str, os.PathLike)):  # a buffer: the classes registered by earlier loads
            return original(f, *args, **kwargs)
        with tasks._SafeLoad.loading(f):
            return original(f, *args, **kwargs)

    torch_load.restricted = True
    for module in (patches, torch_utils, tasks):
        if getattr(module, "torch_load", None) is original:
            module.torch_load = torch_load
            _restored.append((module, original))


def _unrestrict_torch_load() -> None:
    while _restored:
        module, original = _restored.pop()
        if getattr(module.torch_load, "restricted", False):
            module.torch_load = original


@contextlib.contextmanager
def safe_load() -> Iterator[None]:
    """Within: every checkpoint ultralytics reads goes through its restricted loader, also the ones its own
    ``torch_load`` would unpickle unrestricted (:func:`_restrict_torch_load`, undone on leaving the last open
    context). Re-entrant and thread-safe. Around every ultralytics operation that may read a ``.pt``: loading a model,
    building one from a YAML (parsed without ``eval``), training (resume, the final evaluation), exporting.

    Raises:
        DataError: an ultralytics / torch without the restricted loader.
    """
    global _active
    _restricted_loader_on()
    with _lock:
        if _active == 0:
            _restrict_torch_load()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _unrestrict_torch_load()


def trial_load(path) -> None:
    """Load ``path`` through ultralytics' own ``torch_load`` under :func:`safe_load` (its restricted unpickler's
    refusal raised as is, whatever its class): for a file ultralytics will read without us in between."""
    import ultralytics.utils.patches as patches

    with safe_load():
        patches.torch_load(path, map_location="cpu")


# -- training -------------------------------------------------------------------------------------------------
def trainer_base(model) -> type:
    """The ultralytics trainer class of a ``YOLO`` / ``RTDETR`` model. Private: ``Model._smart_load("trainer")``,
    the lookup ``Model.train`` itself uses (task map of the model's task), so our trainer extends the same class."""
    return model._smart_load("trainer")


class TrainerHooks:
    """Mixed in before an ultralytics trainer (``BaseTrainer`` subclass): the parts of its private life cycle ours
    needs, so that the trainer of training/backends/ultralytics.py overrides public names only.

    - :func:`safe_load` around ``__init__`` and ``train``: a DDP worker (a fresh process, started by ultralytics'
      launcher) builds and runs the trainer with nothing of ours around it, and both read checkpoints through
      ultralytics' ``torch_load`` (resume reads last.pt in ``__init__``; the final evaluation strips and re-reads
      last.pt / best.pt in ``train``). In the launching process they nest inside the backend's own context.
    - ``_setup_train`` (private; ``BaseTrainer._do_train`` calls it once before the first epoch, in each DDP worker
      too): runs through :meth:`around_setup_train`.
    """

    def __init__(self, *args, **kwargs):
        with safe_load():
            super().__init__(*args, **kwargs)

    def train(self):
        with safe_load():
            return super().train()

    def _setup_train(self, *args, **kwargs):
        self.around_setup_train(lambda: super(TrainerHooks, self)._setup_train(*args, **kwargs))

    def around_setup_train(self, setup: Callable[[], None]) -> None:
        """Runs ultralytics' set-up of the training (model on the device, AMP, data loaders, optimizer):
        ``setup()``. Override to act before and after it."""
        setup()


def wrap_label_loading(dataset, wrapper: type, *args) -> None:
    """Patch (of one dataset instance): make an ultralytics ``YOLODataset`` load each page through
    ``wrapper(its loader, *args)``, a callable ``index -> label dict`` (``img``, ``instances``, ``cls``, ...). The
    hook is the instance's ``get_image_and_label``: ultralytics has no public one before its augmentations, and
    every page goes through it, the extra pages mosaic draws included (``BaseDataset.__getitem__``,
    ``BaseMixTransform.__call__``). Idempotent per ``wrapper`` class."""
    current = dataset.get_image_and_label
    if isinstance(current, wrapper):
        return
    dataset.get_image_and_label = wrapper(current, *args)


# -- export ---------------------------------------------------------------------------------------------------
def export_mode(model, dynamic: bool = False) -> None:
    """Put the heads and blocks of a DetectionModel in the state ultralytics' exporter puts them in
    (ultralytics/engine/exporter.py, ``Exporter.__call__``): heads returning one raw tensor, C2f blocks splitting
    with constant sizes. The attributes are ultralytics' export flags (public names, set by its exporter only), and
    ``C2f.forward`` is replaced by ``forward_split`` on these instances (the caller's own copy of the model). An
    RT-DETR decoder picks its queries in index order among tied scores (:func:`ordered_query_selection`), in the
    PyTorch reference as in the traced graph."""
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.head import Detect, RTDETRDecoder

    for m in model.modules():
        if isinstance(m, (Detect, RTDETRDecoder)):
            m.dynamic = dynamic
            m.export = True
            m.format = "onnx"
            if hasattr(m, "max_det"):
                m.max_det = 300  # ultralytics' exporter default
            if hasattr(m, "xyxy"):
                m.xyxy = False
            m.shape = None
            if isinstance(m, RTDETRDecoder):
                m.forward = types.MethodType(_ordered_forward, m)
        elif isinstance(m, C2f):
            # split() with constant sizes, as ultralytics' exporter does: chunk() traces to ShapeOf / Gather / Slice,
            # which keeps NNCF's quantizers on each half (a float split and a requantization per C2f block in the
            # INT8 IR); a constant Split lets one quantizer sit on cv1's output, fused into the INT8 convolution
            m.forward = m.forward_split


# -- RT-DETR's query selection ----------------------------------------------------------------------------
_topk_lock = threading.Lock()
_topk_installed = 0  # ordered_query_selection() contexts open in this process
_topk_thread = threading.local()  # .depth: contexts open in this thread
# ultralytics' own Detect._grouped_topk, kept once seen (never cleared: a thread that looked ours up just before the
# last context closed still calls it)
_topk_original: list = []


def _grouped_topk(x, k, groups=8):
    """``Detect._grouped_topk`` (the exact top-k with which ``RTDETRDecoder`` picks its queries in
    ``_get_decoder_input`` and its detections in ``postprocess``): :func:`~training.compat.torch.index_ordered_topk_values`
    along dim 1 in a thread within :func:`ordered_query_selection`, ultralytics' own elsewhere (other heads and
    threads are left alone)."""
    if getattr(_topk_thread, "depth", 0):
        from training.compat.torch import index_ordered_topk_values

        return index_ordered_topk_values(x, k, dim=1)
    return _topk_original[0](x, k, groups)


@contextlib.contextmanager
def ordered_query_selection() -> Iterator[None]:
    """Patch, within the context and this thread: RT-DETR (ultralytics) picks its decoder's queries by top-k over
    the encoder's scores, where a page's blank paper gives many scores equal up to float noise; which of those
    anchors become queries is then up to each runtime's kernel, and an exported RT-DETR-L's raw outputs differed
    from its PyTorch model's by 0.40 (relative) under ONNX Runtime, failing the FP32 parity check with the same
    boxes. Within, the decoder's top-k selections (its queries, over encoder logits, and its final detections, over
    probabilities) rank values rounded to ``TIE_QUANTUM`` with ties in index order, as ONNX's TopK does (the
    transformers DETRs get the same, ``training.compat.transformers.index_ordered_topk``); the detections' order
    among scores 1e-3 apart is then the queries' order. Private: ``Detect._grouped_topk`` (a staticmethod the decoder
    calls through the class), swapped while any context is open, and delegating to the original outside one.
    Re-entrant and thread-safe."""
    from ultralytics.nn.modules.head import Detect

    if not hasattr(Detect, "_grouped_topk"):  # a release that selects otherwise: left as it is
        yield
        return
    global _topk_installed
    with _topk_lock:
        if _topk_installed == 0:
            if not _topk_original:
                _topk_original.append(Detect._grouped_topk)
            Detect._grouped_topk = staticmethod(_grouped_topk)
        _topk_installed += 1
    _topk_thread.depth = getattr(_topk_thread, "depth", 0) + 1
    try:
        yield
    finally:
        _topk_thread.depth -= 1
        with _topk_lock:
            _topk_installed -= 1
            if _topk_installed == 0:
                Detect._grouped_topk = staticmethod(_topk_original[0])


def _ordered_forward(self, *args, **kwargs):
    """``RTDETRDecoder.forward`` within :func:`ordered_query_selection`; bound to an instance by
    :func:`export_mode` (a bound method, so a deep copy of the model calls its own copy)."""
    with ordered_query_selection():
        return type(self).forward(self, *args, **kwargs)
