"""transformers: every patch of it the project applies, in one place (tests/test_compat.py checks each against
the installed release; pyproject.toml bounds transformers to the releases those tests cover)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import types
from collections.abc import Iterator

from training.compat.torch import index_ordered_topk_values

# the source lines of ``ImageLoss.forward`` that make the bug box_count_summed works around
BOX_COUNT_MEAN = ("num_boxes = reduce(num_boxes)", "num_boxes / world_size")


def _averages_box_count_twice(losses) -> bool:
    try:
        source = inspect.getsource(losses.ImageLoss.forward)
    except (AttributeError, OSError, TypeError):
        return False
    return all(line in source for line in BOX_COUNT_MEAN)


@contextlib.contextmanager
def box_count_summed(processes: int) -> Iterator[None]:
    """Patch, within the context: transformers' DETR-family losses (``ImageLoss.forward`` in
    transformers/loss/loss_for_object_detection.py: DETR, Conditional-DETR, YOLOS) average the box count over the
    processes with accelerate's ``reduce``, whose default is the mean, and then divide by the number of processes
    again: under N processes the box losses of a batch with more than N boxes come out up to N times too large.
    The original DETR sums, then divides; within this context the loss module's ``reduce`` sums. Applied only under
    several processes and only to the source that has that pattern (:data:`BOX_COUNT_MEAN`), so a fixed
    transformers is left alone (and tests/test_compat.py then says the patch can go)."""
    try:
        from transformers.loss import loss_for_object_detection as losses
    except ImportError:
        losses = None
    if processes < 2 or losses is None or not _averages_box_count_twice(losses):
        yield
        return
    mean = losses.reduce
    losses.reduce = functools.partial(mean, reduction="sum")
    try:
        yield
    finally:
        losses.reduce = mean


# the source lines of the ViT embeddings' ``interpolate_pos_encoding`` that make fixed_position_embeddings needed
INTERPOLATES_WHILE_TRACING = ("torch.jit.is_tracing()", "antialias=True")
_ORIGINAL = "_sigdet_interpolate_pos_encoding"  # where a patched instance keeps its own method


def interpolates_while_tracing(module) -> bool:
    """Whether ``module`` (an embeddings module) re-samples its position embeddings whenever it is traced, with the
    antialiased bicubic resize the ONNX exporter has no operator for (:data:`INTERPOLATES_WHILE_TRACING`)."""
    method = getattr(type(module), "interpolate_pos_encoding", None)
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    return all(line in source for line in INTERPOLATES_WHILE_TRACING)


def fixed_position_embeddings(model, height: int, width: int) -> int:
    """Patch (of one model instance; returns the number of embeddings modules patched): RF-DETR's DINOv2 backbone
    (``RfDetrDinov2Embeddings.interpolate_pos_encoding`` in transformers/models/rf_detr/modeling_rf_detr.py)
    interpolates its position embeddings to the input size with ``antialias=True`` bicubic, and does so on every
    call while tracing ("to ensure the exported model works for dynamic input shapes"), even at the size they were
    trained for; ``torch.onnx.export`` has no operator for ``aten::_upsample_bicubic2d_aa`` and stops. An export has
    one fixed input size: while tracing at ``height x width``, the patched method returns the embeddings for that
    size computed eagerly once here (the same numbers, now a constant of the graph); outside tracing, and at any
    other size, it is the library's own method. Only instances whose class still has that behaviour are patched
    (:func:`interpolates_while_tracing`), so a fixed transformers is left alone (tests/test_compat.py then says the
    patch can go)."""
    import torch

    patched = 0
    for module in model.modules():
        if not (interpolates_while_tracing(module) and hasattr(module, "patch_size")):
            continue
        original = getattr(module, _ORIGINAL, module.interpolate_pos_encoding)
        patch = int(
            module.patch_size[0] if isinstance(module.patch_size, (tuple, list)) else module.patch_size
        )
        n = (height // patch) * (width // patch)
        dim = module.position_embeddings.shape[-1]
        with torch.no_grad():
            fixed = original(torch.zeros(1, n + 1, dim), height, width).detach().clone()

        def interpolate(embeddings, h, w, _original=original, _fixed=fixed, _size=(height, width)):
            if torch.jit.is_tracing() and (int(h), int(w)) == _size:
                return _fixed.to(device=embeddings.device, dtype=embeddings.dtype)
            return _original(embeddings, h, w)

        setattr(module, _ORIGINAL, original)
        module.interpolate_pos_encoding = interpolate
        patched += 1
    return patched


# the call transformers' two-stage DETRs select their queries with (RT-DETRv2, D-FINE, DEIMv2, RF-DETR)
TOPK_CALL = "torch.topk("
_topk_lock = threading.Lock()
_topk_active: dict[str, int] = {}  # module name -> open index_ordered_topk() contexts patching it
_topk_saved: dict[str, object] = {}  # module name -> its own ``torch``


@functools.cache
def _selects_with_topk(module_name: str) -> bool:
    try:
        return TOPK_CALL in inspect.getsource(sys.modules[module_name])
    except (KeyError, OSError, TypeError):
        return False


class _TorchWithOrderedTopk(types.ModuleType):
    """``torch`` as one transformers modelling module sees it within :func:`index_ordered_topk`: the same module but
    for ``topk``."""

    def __init__(self, torch_module):
        super().__init__("torch")
        self._torch = torch_module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    topk = staticmethod(index_ordered_topk_values)


@contextlib.contextmanager
def index_ordered_topk(model) -> Iterator[None]:
    """Patch, within the context: the two-stage DETRs of transformers (RT-DETRv2, D-FINE, DEIMv2, RF-DETR) pick their
    queries with ``torch.topk`` over the encoder's scores. A page is mostly blank paper, whose anchors score the same
    up to float rounding (1e-7 apart, less than torch and ONNX Runtime differ by): which of those anchors become
    queries, and in what order, is then up to each runtime's kernel and rounding, so an exported model's raw outputs
    differ from the PyTorch model's (the same boxes, in another order and set among the blank ones; seen on every
    two-stage family here). Within this context the modelling modules of ``model`` that call ``torch.topk``
    (:data:`TOPK_CALL`) see a ``torch`` whose topk ranks the scores rounded to :data:`training.compat.torch.TIE_QUANTUM` and breaks ties by
    index, as ONNX's TopK does: the model and its export pick the same queries (unless a score sits within float
    noise of a rounding edge). A selection among scores 0.001 apart is a coin toss either way; the decoder re-scores
    every query. Re-entrant and thread-safe; other modules, and the modules outside the context, are left alone."""
    import torch

    names = sorted(
        {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("transformers.models.")}
    )
    names = [n for n in names if _selects_with_topk(n)]
    with _topk_lock:
        for name in names:
            if _topk_active.get(name, 0) == 0:
                module = sys.modules[name]
                _topk_saved[name] = module.torch
                module.torch = _TorchWithOrderedTopk(torch)
            _topk_active[name] = _topk_active.get(name, 0) + 1
    try:
        yield
    finally:
        with _topk_lock:
            for name in names:
                _topk_active[name] -= 1
                if _topk_active[name] == 0:
                    sys.modules[name].torch = _topk_saved.pop(name)
