"""torch: every private name of it the project uses, in one place (tests/test_compat.py checks each against the
installed release), and the index-ordered top-k with which the two-stage DETRs of both libraries pick their queries
(:func:`index_ordered_topk_values`, used by the ultralytics and transformers compat modules)."""

from __future__ import annotations

import io


def globals_in_pickle(data: bytes) -> set[str] | None:
    """The globals (``module.name``) a pickle stream names, read without unpickling it; ``None`` when this torch
    no longer has the scanner. Private: ``torch._weights_only_unpickler.get_globals_in_pkl``, the scanner torch's
    own ``get_unsafe_globals_in_checkpoint`` uses (which lists only the globals outside the allow-list, and so
    stops listing classes a restricted load registered as safe).

    Raises:
        Exception: a damaged pickle stream (whatever the scanner raises).
    """
    try:
        from torch._weights_only_unpickler import get_globals_in_pkl
    except ImportError:
        return None
    return set(get_globals_in_pkl(io.BytesIO(data)))


# encoder scores (logits) closer than this are one score when queries are picked: their order is the anchors' order
TIE_QUANTUM = 1e-3


def index_ordered_topk_values(input, k, dim=-1, largest=True, sorted=True, *, out=None):  # noqa: A002 (torch.topk's names)
    """``torch.topk`` that picks by the scores rounded to :data:`TIE_QUANTUM`, ties in index order (the lower index
    first: the order ONNX's TopK defines and ONNX Runtime follows), returning the unrounded values of the picked
    elements. While tracing it records TopK over the rounded scores, which the exported graph then orders the same
    way (ONNX Runtime; OpenVINO once ``export.convert.stable_topk`` has set its TopK to ONNX's order)."""
    import torch

    if out is not None or not sorted:
        return torch.topk(input, k, dim=dim, largest=largest, sorted=sorted, out=out)
    key = torch.round(input / TIE_QUANTUM)
    if torch.jit.is_tracing():
        indices = torch.topk(key, k, dim=dim, largest=largest)[1]
    else:
        indices = torch.sort(key, stable=True, dim=dim, descending=largest)[1].narrow(dim, 0, k)
    return input.gather(dim, indices), indices
