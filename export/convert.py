"""Converters: PyTorch -> ONNX (our own ``torch.onnx.export`` of the family's module, so the PyTorch reference
and the graph are the same object), ONNX -> OpenVINO IR (FP32 / INT8 post-training quantization with NNCF), and
ONNX -> TensorRT engine (FP32 / FP16)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from training.hardware import cpu_flags
from training.inference.families import Family
from training.inference.runtimes import Unavailable, openvino_core, port_name, tensorrt

log = logging.getLogger(__name__)


def to_onnx(family: Family, path: Path, opset: int, dynamic: bool = False) -> Path:
    """Trace the family's module at ``imgsz``; ``dynamic`` makes the batch axis symbolic, a dynamic input
    (``family.dynamic_hw``) the inputs' height and width (the outputs' sizes follow from them)."""
    axes = {n: {0: "batch"} if dynamic else {} for n in family.input_names + family.output_names}
    if family.dynamic_hw:
        for n in family.input_names:
            axes[n].update({2: "height", 3: "width"})
    axes = {n: a for n, a in axes.items() if a} or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in the heads
        torch.onnx.export(
            family.module.cpu().eval(),
            family.example_inputs(1),
            str(path),
            input_names=family.input_names,
            output_names=family.output_names,
            opset_version=int(opset),
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: handles every head here, as ultralytics' exporter does
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


INT8_PRESETS = (
    "mixed",
    "performance",
)  # NNCF's QuantizationPreset names (conf/export.yaml openvino.int8.preset)

#: conf/export.yaml openvino.int8.overflow_fix: NNCF's OverflowFix values, and auto (:func:`overflow_fix`)
OVERFLOW_FIXES = ("auto", "enable", "first_layer_only", "disable")
#: INT8 dot-product instructions that accumulate u8 x s8 products in 32 bits (lscpu's flag names)
VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
#: ONEDNN_MAX_CPU_ISA values that cap OpenVINO's kernels below every VNNI instruction set
_PRE_VNNI_ISAS = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def overflow_fix(setting: str, flags: list[str] | None = None) -> tuple[str, str]:
    """NNCF's ``overflow_fix`` for ``setting`` on this CPU, with the reason in words. ``auto``: ``enable`` (every
    convolution's weights in half the 8-bit range) where OpenVINO's INT8 kernels multiply without VNNI / AMX, NNCF's
    default ``first_layer_only`` elsewhere. Without VNNI, u8 x s8 products are summed pairwise into 16 bits
    (``vpmaddubsw``), which saturates for large activations and weights (NNCF's and OpenVINO's "saturation
    issue"): a YOLOv8s at 640 quantized with the default lost 2.3 to 3.2 points of valid mAP50-95 on an AVX2-only AMD
    EPYC, and the parity check refused it; on an AMX Xeon the same recipe lost nothing (docs/export.md)."""
    if setting not in OVERFLOW_FIXES:
        raise ValueError(f"openvino.int8.overflow_fix={setting!r}: valid are {list(OVERFLOW_FIXES)}")
    if setting != "auto":
        return setting, "openvino.int8.overflow_fix"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    have = [f for f in VNNI_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if have and cap not in _PRE_VNNI_ISAS:
        return (
            "first_layer_only",
            f"auto: NNCF's default, this CPU's INT8 kernels accumulate in 32 bits ({have[0]})",
        )
    why = f"ONEDNN_MAX_CPU_ISA={cap} caps OpenVINO below VNNI" if have else "this CPU has no VNNI / AMX INT8"
    return (
        "enable",
        f"auto: {why}, its 16-bit INT8 intermediates can saturate; weights in half the 8-bit range",
    )


def overflow_fix_candidates(setting: str, flags: list[str] | None = None) -> list[tuple[str, str]]:
    """The overflow fixes ``python -m export`` tries in turn, each with its reason: the next is quantized only when
    the one before failed parity. ``auto`` on a CPU without VNNI: ``enable``, then NNCF's default
    ``first_layer_only``; neither suits every model there (AVX2 EPYC, trained, valid split: a YOLOv8s at 640 needs
    ``enable``, ``first_layer_only`` lost 2.3 points of mAP50-95; a YOLOv8n at 320 lost 1.7 points of mAP50 with
    ``enable``, gained 0.9 with ``first_layer_only``). Elsewhere, and for a value set by hand: that one alone."""
    first = overflow_fix(setting, flags)
    if setting != "auto" or first[0] != "enable":
        return [first]
    why = f"{first[1]}; enable failed parity, so NNCF's default instead"
    return [first, ("first_layer_only", why)]


def _quantize_kwargs(family: Family, extra_patterns: list[str] = ()) -> dict:
    """NNCF arguments from the backend's quantization hints (``ExportSpec.int8``) plus the user's patterns."""
    import nncf

    hints = family.int8
    kwargs = {}
    if hints.get("model_type") == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    patterns = [*(hints.get("ignored_patterns") or []), *extra_patterns]
    types = list(hints.get("ignored_types") or [])
    if patterns or types:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=patterns, types=types, validate=False)
    return kwargs


def stable_topk(model) -> int:
    """Give every TopK of an OpenVINO model ONNX's order for ties (the lower index first), in place; returns how many.

    ONNX's TopK defines that order, and the exports of the two-stage DETRs (RT-DETR, RT-DETRv2, D-FINE, DEIMv2,
    RF-DETR) rely on it: they pick their queries by TopK over encoder scores rounded so that the blank paper's anchors
    tie (training/compat/transformers.py ``index_ordered_topk``). OpenVINO's ONNX front end converts TopK with
    ``stable=False``, so the CPU plugin returned the tied anchors in another order: the same boxes, but the raw
    outputs 0.86 apart (relative) from ONNX Runtime's on a D-FINE, and the FP32 parity check failed. With
    ``stable=True`` they agree to 4e-7. A TopK of an older opset (no ``stable``: ONNX opsets before 11 give one) or
    inside a sub-graph (``If`` / ``Loop`` bodies, which ``get_ops`` does not enter) is left as it is, and logged."""
    n = left = 0
    for op in model.get_ops():
        if op.get_type_name() == "TopK":
            if "stable" in op.get_attributes():
                op.set_attribute("stable", True)
                n += 1
            else:
                left += 1
    if left:
        log.warning("%d TopK of an opset without 'stable' keep OpenVINO's order among ties", left)
    return n


def to_openvino(
    onnx_path: Path,
    xml_path: Path,
    family: Family,
    precision: str = "fp32",
    calibration: list[dict[str, np.ndarray]] | None = None,
    int8: dict | None = None,
) -> Path:
    """ONNX -> OpenVINO IR. ``precision``: ``fp32`` (also the BF16 runtime's model: BF16 is an inference hint,
    not a file format) or ``int8`` (NNCF post-training quantization over ``calibration`` feeds; ``int8``: the
    ``openvino.int8`` config: NNCF's ``preset`` (``performance`` = symmetric activations, ``mixed`` = asymmetric
    ones), ``fast_bias_correction``, ``overflow_fix`` (:func:`overflow_fix`) and ``ignored_patterns`` kept in
    float on top of the backend's own).

    ``ov.convert_model``, not ``Core.read_model``: it applies OpenVINO's front-end fusions before NNCF sees the
    graph. The ONNX export spells SiLU as ``x * Sigmoid(x)``; read as is, NNCF quantizes both inputs of that
    Multiply, the CPU plugin can then no longer fuse the activation into the INT8 convolution, and every SiLU
    ran as a separate FP32 subgraph: 47% of a YOLOv8s INT8 inference on an AMX Xeon (OpenVINO's per-layer
    counters, ``python -m export.benchmark profile=true``). Fused to ``Swish`` first, the quantizers sit on the
    convolutions' inputs only and the activation runs inside the INT8 convolution.
    """
    openvino_core()  # Unavailable without openvino
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    stable_topk(model)
    if precision == "int8":
        try:
            import nncf
        except ImportError as e:
            raise Unavailable(f"OpenVINO INT8 needs the nncf package ({e})") from None
        nncf.set_log_level(logging.WARNING)  # one INFO line per operator otherwise
        if not calibration:
            raise ValueError("INT8 quantization needs calibration images")
        names = [port_name(i) for i in model.inputs]
        dataset = nncf.Dataset(calibration, lambda feeds: {k: feeds[k] for k in names})
        preset = str(int8["preset"])
        if preset not in INT8_PRESETS:
            raise ValueError(f"NNCF preset {preset!r}: valid are {list(INT8_PRESETS)}")
        kwargs = {"subset_size": len(calibration), "preset": getattr(nncf.QuantizationPreset, preset.upper())}
        kwargs["fast_bias_correction"] = bool(int8["fast_bias_correction"])
        fix, _ = overflow_fix(str(int8.get("overflow_fix", "auto")))
        kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix(fix)
        )
        kwargs.update(_quantize_kwargs(family, list(int8.get("ignored_patterns") or [])))
        model = nncf.quantize(model, dataset, **kwargs)
    elif precision != "fp32":
        raise ValueError(f"OpenVINO precision {precision!r}: valid are fp32, int8 (bf16 is a runtime hint)")
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def profile_shapes(
    shape: tuple[int, ...], max_batch: int, max_hw: tuple[int, int], stride: int = 32
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """TensorRT's (min, opt, max) shapes for an NCHW input ``shape`` with symbolic (-1) axes, or None for a
    static one: batch 1..``max_batch`` (opt 1, the latency case); height and width (a dynamic input: one side is
    ``imgsz``, the other padded to the stride) from a quarter of ``max_hw`` up to it, opt at ``max_hw``: pages up
    to 4:1, and enough anchors at the smallest shape for a YOLOv10 head's top-300 (160 x 160: 525 anchors)."""
    if all(d >= 0 for d in shape):
        return None
    lo, opt, hi = list(shape), list(shape), list(shape)
    for axis, d in enumerate(shape):
        if d >= 0:
            continue
        if axis == 0:
            lo[axis], opt[axis], hi[axis] = 1, 1, int(max_batch)
        elif axis in (2, 3) and len(shape) == 4:
            side = int(max_hw[axis - 2])
            lo[axis], opt[axis], hi[axis] = (
                min(side, max(stride, -(-side // 4 // stride) * stride)),
                side,
                side,
            )
        else:
            raise ValueError(
                f"TensorRT profile: no range for the symbolic axis {axis} of input shape {shape}"
            )
    return tuple(lo), tuple(opt), tuple(hi)


def to_tensorrt(
    onnx_path: Path,
    engine_path: Path,
    fp16: bool,
    workspace_gb: float,
    max_batch: int,
    max_hw: tuple[int, int] = (640, 640),
) -> Path:
    """ONNX -> serialized TensorRT engine (needs CUDA and the tensorrt package); symbolic axes get an
    optimisation profile (:func:`profile_shapes`): batches 1..``max_batch`` (``trt_workspace_gb`` /
    ``trt_max_batch`` in conf/export.yaml), a dynamic input's height and width up to ``max_hw``."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {inp.name: profile_shapes(tuple(inp.shape), max_batch, max_hw) for inp in inputs}
    for name, s in shapes.items():
        if s is not None:
            profile.set_shape(name, *s)
    if any(s is not None for s in shapes.values()):
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed")
    engine_path.write_bytes(bytes(blob))
    return engine_path
