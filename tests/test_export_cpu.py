"""The CPU deployment path of ``python -m export``: the shared letterbox (uint8 page and its float view,
rectangular inputs, RT-DETR decoding at (h, w)), OpenVINO with the uint8 page converted inside the graph, the
inference-precision hints, the INT8 IR (SiLU fused to Swish before NNCF, the NNCF preset and overflow fix), the fastest CPU path
recorded in the manifest and loaded from the export folder, rectangular exports, the CPU peak and FLOP count
behind the latency table's "% of peak", and ultralytics' own exports as peers (slow).

One tiny YOLOv8n (``trained_run``) is exported once per module to ONNX, OpenVINO FP32 and OpenVINO INT8."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BENCH_TINY, EMBEDDED, compose_cfg, decode_table, export_tiny
from training.cli import UserError

CPU_FORMATS = ["onnx", "openvino_fp32", "openvino_int8"]
VALID = sorted((EMBEDDED / "valid").glob("*.jpg"))


def _artifact(manifest, fmt):
    return next(a for a in manifest["artifacts"] if a["format"] == fmt)


@pytest.fixture(scope="module")
def cpu_export(tmp_path_factory, trained_run):
    """The trained tiny YOLOv8n exported to ONNX, OpenVINO FP32 and INT8 (u8 input, CPU path selected)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    _, run_dir, _ = trained_run
    tmp = tmp_path_factory.mktemp("cpu_export")
    ckpt = run_dir / "weights" / "best.pt"
    cfg, out, manifest = export_tiny(tmp, ckpt, CPU_FORMATS)
    return ckpt, out, manifest


# ---------------------------------------------------------------- letterbox and decoding (no model)


def _page(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("imgsz", [64, (64, 96), (96, 64), (640, 480)], ids=str)
@pytest.mark.parametrize("size", [(480, 630), (630, 480), (64, 64), (7, 3)], ids=str)
def test_letterbox_is_the_u8_page_over_255(size, imgsz):
    from training.backends.yolo_processing import letterbox, letterbox_u8

    img = _page(*size)
    x, meta = letterbox(img, imgsz)
    canvas, meta_u8 = letterbox_u8(img, imgsz)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    assert canvas.dtype == np.uint8 and canvas.shape == (h, w, 3)
    assert x.dtype == np.float32 and x.shape == (3, h, w)
    assert meta == meta_u8
    # exactly, not approximately: the OpenVINO graph does this conversion itself on the uint8 page
    assert np.array_equal(x, canvas.transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_letterbox_square_int_equals_square_tuple():
    from training.backends.yolo_processing import letterbox_u8

    img = _page(480, 630, seed=1)
    a, ma = letterbox_u8(img, 64)
    b, mb = letterbox_u8(img, (64, 64))
    assert np.array_equal(a, b) and ma == mb


def test_rectangular_letterbox_portrait_fills_the_height_centred():
    from training.backends.yolo_processing import PAD_VALUE, letterbox_u8

    # a portrait page (w 100, h 200) of one colour into a (h 128, w 96) input: gain min(96/100, 128/200) = 0.64,
    # resized to 64 x 128: the height is filled, 16 grey columns on each side
    page = Image.new("RGB", (100, 200), (10, 200, 30))
    canvas, (gain, px, py) = letterbox_u8(page, (128, 96))
    assert canvas.shape == (128, 96, 3)
    assert gain == pytest.approx(0.64) and (px, py) == (16.0, 0.0)
    assert (canvas[:, :16] == PAD_VALUE).all() and (canvas[:, 80:] == PAD_VALUE).all()
    assert (canvas[:, 16:80] == (10, 200, 30)).all()  # every row: no vertical padding
    # the same page into the square of the larger side pads more: the rectangle is what a portrait page needs
    sq, (g2, px2, py2) = letterbox_u8(page, 128)
    assert sq.shape == (128, 128, 3) and (px2, py2) == (32.0, 0.0) and g2 == pytest.approx(0.64)
    # a landscape page in the same portrait input: the width is filled, grey bands above and below
    land, (g3, px3, py3) = letterbox_u8(Image.new("RGB", (192, 96), (1, 2, 3)), (128, 96))
    assert g3 == pytest.approx(0.5) and (px3, py3) == (0.0, 40.0)
    assert (
        (land[:40] == PAD_VALUE).all() and (land[88:] == PAD_VALUE).all() and (land[40:88] == (1, 2, 3)).all()
    )


@pytest.mark.parametrize("hw", [(630, 480), (480, 630), (640, 640), (300, 900), (7, 3), (1000, 999)], ids=str)
def test_letterbox_is_ultralytics_letterbox_in_both_modes(hw):
    """Bit for bit ultralytics' own ``LetterBox``: into a fixed input (``auto=False``), and for a dynamic input
    (``auto=True``, its rectangular inference) each page padded only to the stride: 630 x 480 -> 640 x 512."""
    from ultralytics.data.augment import LetterBox

    from training.backends.yolo_processing import letterbox_u8

    page = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours, (gain, px, py) = letterbox_u8(page, 640, stride=32)
    assert np.array_equal(ours, LetterBox((640, 640), auto=True, stride=32)(image=page))
    assert max(ours.shape[:2]) == 640 and ours.shape[0] % 32 == 0 and ours.shape[1] % 32 == 0
    assert ours.shape[0] - round(hw[0] * gain) < 32 and ours.shape[1] - round(hw[1] * gain) < 32
    fixed, _ = letterbox_u8(page, (640, 480))
    assert np.array_equal(fixed, LetterBox((640, 480), auto=False)(image=page))


def test_rtdetr_decode_scales_normalised_boxes_by_width_and_height():
    from training.backends.yolo_processing import decode

    h, w = 64, 96
    raw = np.zeros((5, 4 + 2), np.float32)  # 5 queries, 2 classes
    raw[0] = [0.5, 0.5, 0.25, 0.5, 0.1, 0.9]  # class 1, score 0.9: centre of the input, 24 x 32 px
    raw[1] = [0.25, 0.75, 0.5, 0.25, 0.6, 0.2]  # class 0, score 0.6
    raw[2:, :4] = 0.5  # the rest below conf
    raw[2:, 4:] = 0.01
    # no letterbox (gain 1, no padding): the input frame is the page
    det = decode(raw, "rtdetr", (1.0, 0.0, 0.0), (w, h), (h, w), conf=0.25, iou=None, max_det=300)
    np.testing.assert_allclose(det.boxes, [[36, 16, 60, 48], [0, 40, 48, 56]], atol=1e-4)
    np.testing.assert_allclose(det.scores, [0.9, 0.6], atol=1e-6)
    assert det.labels.tolist() == [1, 0]
    # a letterboxed page (gain 0.5, 8 px padding on the left): boxes back in the original frame
    det2 = decode(raw, "rtdetr", (0.5, 8.0, 0.0), (200, 200), (h, w), conf=0.25, iou=None, max_det=300)
    np.testing.assert_allclose(det2.boxes[0], [(36 - 8) / 0.5, 16 / 0.5, (60 - 8) / 0.5, 48 / 0.5], atol=1e-3)
    # the square size scales both axes alike (guards the (h, w) order above)
    sq = decode(raw, "rtdetr", (1.0, 0.0, 0.0), (96, 96), 96, conf=0.25, iou=None, max_det=300)
    np.testing.assert_allclose(sq.boxes[0], [36, 24, 60, 72], atol=1e-4)


# ---------------------------------------------------------------- OpenVINO runner: precision hints


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_inference_precision_hints(monkeypatch, bf16):
    import training.inference.runtimes as rt

    caps = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"] + (["BF16"] if bf16 else [])
    monkeypatch.setattr(rt, "cpu_capabilities", lambda: caps)
    assert rt.inference_precision("fp32") == "f32"
    assert rt.inference_precision("int8") == ("bf16" if bf16 else "f32")
    if bf16:
        assert rt.inference_precision("bf16") == "bf16"
    else:
        with pytest.raises(rt.Unavailable, match="BF16"):
            rt.inference_precision("bf16")


def test_no_openvino_means_no_bf16(monkeypatch):
    import training.inference.runtimes as rt

    monkeypatch.setattr(rt, "cpu_capabilities", lambda: [])
    assert rt.bf16_supported()[0] is False
    assert rt.inference_precision("int8") == "f32"
    with pytest.raises(rt.Unavailable):
        rt.inference_precision("bf16")


# ---------------------------------------------------------------- OpenVINO runner: uint8 page in the graph


def _family(out):
    from training.inference.exported import META, load_meta
    from training.inference.families import Family

    return Family.from_meta(load_meta(out / META))


def test_openvino_u8_input_matches_float_input(cpu_export):
    import openvino as ov

    from training.inference.runtimes import OpenVINORunner

    _, out, _ = cpu_export
    family = _family(out)
    xml = out / "openvino_fp32" / "model.xml"
    assert family.graph_preprocessing == {"mean": [0.0, 0.0, 0.0], "scale": [255.0, 255.0, 255.0]}
    u8 = OpenVINORunner(xml, "fp32", u8_input=family.graph_preprocessing)
    fl = OpenVINORunner(xml, "fp32")
    assert u8.u8_input and not fl.u8_input
    assert u8.config["INFERENCE_PRECISION_HINT"] == "f32"
    (inp,) = u8.compiled.inputs
    assert inp.get_element_type() == ov.Type.u8 and list(inp.get_shape()) == [1, 64, 64, 3]
    assert fl.compiled.inputs[0].get_element_type() == ov.Type.f32
    assert list(fl.compiled.inputs[0].get_shape()) == [1, 3, 64, 64]
    for image in VALID[:3]:
        fu8, ctx_u8 = family.feeds_u8(image)
        ffl, ctx_fl = family.feeds(image)
        assert fu8["images"].dtype == np.uint8 and fu8["images"].shape == (1, 64, 64, 3)
        assert ctx_u8 == ctx_fl
        a, b = u8(fu8), fl(ffl)
        assert len(a) == len(b) == 1 and a[0].shape == b[0].shape
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4)
        # the decoded boxes agree too
        da, db = family.decode(a, ctx_u8, 0.01), family.decode(b, ctx_fl, 0.01)
        assert len(da) == len(db)
        np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-2)


def test_openvino_layer_times_and_throughput(cpu_export):
    from training.inference.runtimes import OpenVINORunner

    _, out, _ = cpu_export
    family = _family(out)
    for fmt, prec in (("openvino_fp32", "fp32"), ("openvino_int8", "int8")):
        runner = OpenVINORunner(
            out / fmt / "model.xml", prec, u8_input=family.graph_preprocessing, profile=True
        )
        feeds, _ = family.feeds_u8(VALID[0])
        kernels = runner.layer_times(feeds, runs=3)
        assert kernels and all(isinstance(k, str) and v > 0 for k, v in kernels.items()), kernels
        assert list(kernels.values()) == sorted(kernels.values(), reverse=True)
        tp = runner.throughput(feeds, seconds=0.3, warmup=1)
        assert set(tp) == {"pages_per_s", "requests", "streams"}
        assert all(v > 0 for v in tp.values()), tp
        assert tp["requests"] == int(tp["requests"])


# ---------------------------------------------------------------- the INT8 IR


def _through_fq(node):
    """The node behind a chain of FakeQuantize ops."""
    while node.get_type_name() == "FakeQuantize":
        node = node.input(0).get_source_output().get_node()
    return node


def _c2f_blocks(checkpoint) -> int:
    from ultralytics.nn.modules.block import C2f

    from training.backends.ultralytics import load_yolo

    return sum(isinstance(m, C2f) for m in load_yolo(checkpoint).model.modules())


def test_int8_ir_has_swish_and_no_quantized_sigmoid_multiply(cpu_export):
    import openvino as ov

    _, out, manifest = cpu_export
    assert _artifact(manifest, "openvino_int8")["status"] == "passed", manifest
    core = ov.Core()
    ops = core.read_model(str(out / "openvino_int8" / "model.xml")).get_ordered_ops()
    kinds = [op.get_type_name() for op in ops]
    assert kinds.count("FakeQuantize") > 10, "not an INT8 model"
    assert kinds.count("Swish") >= 10, "SiLU was not fused to Swish before NNCF"
    # read as is (Core.read_model of the ONNX), NNCF quantizes both inputs of every x * Sigmoid(x): a
    # Multiply fed by a FakeQuantize with a Sigmoid (directly or behind a FakeQuantize) on an input
    bad = []
    for op in ops:
        if op.get_type_name() != "Multiply":
            continue
        producers = [inp.get_source_output().get_node() for inp in op.inputs()]
        quantized = any(p.get_type_name() == "FakeQuantize" for p in producers)
        if quantized and any(_through_fq(p).get_type_name() == "Sigmoid" for p in producers):
            bad.append(op.get_friendly_name())
    assert not bad, f"quantized x * Sigmoid(x) left in the INT8 IR: {bad[:5]}"
    # every C2f block splits cv1's output with a constant split behind one quantizer (ultralytics' forward_split):
    # traced from chunk() it was a ShapeOf-driven Slice per half, each with its own FakeQuantize, which the CPU
    # plugin ran as a float split plus a requantization per block (~8% of a YOLOv8s INT8 inference)
    splits = [op for op in ops if op.get_type_name() in ("Split", "VariadicSplit")]
    assert len(splits) == _c2f_blocks(cpu_export[0]) > 0, [op.get_friendly_name() for op in splits]
    for op in splits:
        assert op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize", op
    requant = [
        op.get_friendly_name()
        for op in ops
        if op.get_type_name() == "FakeQuantize"
        and op.input(0).get_source_output().get_node().get_type_name() == "Slice"
    ]
    assert not requant, f"a quantizer per slice (a C2f traced through chunk()): {requant[:4]}"
    # the FP32 IR went through the same conversion
    fp32 = [
        op.get_type_name()
        for op in core.read_model(str(out / "openvino_fp32" / "model.xml")).get_ordered_ops()
    ]
    assert "Swish" in fp32 and "FakeQuantize" not in fp32


class _Calib:
    def __init__(self, images):
        self.calibration = images


@pytest.mark.parametrize("preset", ["mixed", "performance"])
def test_int8_preset_reaches_nncf(cpu_export, tmp_path, monkeypatch, preset):
    """``openvino.int8.preset`` goes from the config through ``to_openvino`` to ``nncf.quantize``."""
    import nncf

    from export.run import _build
    from training.inference.families import load_family
    from training.inference.runtimes import OpenVINORunner

    ckpt, out, _ = cpu_export
    seen = {}

    def fake_quantize(model, dataset, **kwargs):  # the preset is what we check: skip the calibration
        seen.update(kwargs)
        seen["n"] = len(list(dataset.get_inference_data()))
        return model

    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    over = [
        f"checkpoint={ckpt}",
        f"openvino.int8.preset={preset}",
        "openvino.int8.ignored_patterns=[.*extra.*]",
    ]
    cfg = compose_cfg("export", over, tmp_path)
    family = load_family(ckpt, decode_table())
    path, runner = _build("openvino_int8", family, tmp_path, out / "model.onnx", _Calib(VALID[:2]), cfg)
    want = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[
        preset
    ]
    assert seen["preset"] == want and seen["subset_size"] == 2 and seen["n"] == 2
    assert seen["fast_bias_correction"] is False  # conf/export.yaml: the full correction
    # the backend's hints go along with the user's patterns
    assert ".*extra.*" in seen["ignored_scope"].patterns and len(seen["ignored_scope"].patterns) > 1
    assert path == tmp_path / "openvino_int8" / "model.xml" and path.is_file()
    assert isinstance(runner, OpenVINORunner) and runner.u8_input


@pytest.mark.parametrize(
    "flags, isa_cap, want",
    [
        (["avx2", "fma"], None, "enable"),  # AVX2 only (a Zen 3 EPYC): vpmaddubsw's 16-bit sums saturate
        (["avx2", "avx512f", "avx512_vnni"], None, "first_layer_only"),
        (["avx2", "avx_vnni"], None, "first_layer_only"),
        (["avx2", "avx512f", "avx512_vnni", "amx_int8"], None, "first_layer_only"),
        # OpenVINO's kernels capped below VNNI
        (["avx2", "avx512f", "avx512_vnni", "amx_int8"], "avx2", "enable"),
        (["avx2", "avx512f", "avx512_vnni", "amx_int8"], "AVX512_CORE_AMX", "first_layer_only"),
    ],
)
def test_overflow_fix_auto_follows_the_int8_unit(monkeypatch, flags, isa_cap, want):
    from export.convert import overflow_fix, overflow_fix_candidates

    if isa_cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    fix, why = overflow_fix("auto", flags)
    assert fix == want and why.startswith("auto: ")
    assert ("VNNI" in why) if want == "enable" else ("default" in why)
    # what the export tries in turn: without VNNI NNCF's default after enable, else the one fix
    tries = overflow_fix_candidates("auto", flags)
    assert tries[0] == (fix, why)
    assert [t[0] for t in tries] == (["enable", "first_layer_only"] if want == "enable" else [want])
    # a value set by hand wins over the CPU, and is the only one tried
    for setting in ("enable", "first_layer_only", "disable"):
        assert overflow_fix(setting, flags) == (setting, "openvino.int8.overflow_fix")
        assert overflow_fix_candidates(setting, flags) == [overflow_fix(setting, flags)]
    with pytest.raises(ValueError, match="overflow_fix='half'"):
        overflow_fix("half", flags)


@pytest.mark.parametrize(
    "setting, vnni, want",
    [("auto", False, "enable"), ("auto", True, "first_layer_only"), ("disable", False, "disable")],
)
def test_overflow_fix_reaches_nncf(cpu_export, tmp_path, monkeypatch, setting, vnni, want):
    """``openvino.int8.overflow_fix`` (resolved for the CPU when ``auto``) reaches ``nncf.quantize``."""
    import nncf

    import export.convert
    from export.run import _build
    from training.inference.families import load_family

    ckpt, out, _ = cpu_export
    seen = {}
    monkeypatch.setattr(nncf, "quantize", lambda model, dataset, **kw: seen.update(kw) or model)
    monkeypatch.setattr(
        export.convert, "cpu_flags", lambda: ["avx2", "fma"] + (["avx512_vnni"] if vnni else [])
    )
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cfg = compose_cfg("export", [f"checkpoint={ckpt}", f"openvino.int8.overflow_fix={setting}"], tmp_path)
    family = load_family(ckpt, decode_table())
    _build("openvino_int8", family, tmp_path, out / "model.onnx", _Calib(VALID[:2]), cfg)
    assert seen["advanced_parameters"].overflow_fix == nncf.OverflowFix(want)


@pytest.mark.parametrize(
    "failing, tried, kept",
    [
        # no VNNI: enable first; when it fails parity, NNCF's default is quantized in its place
        ({"enable"}, ["enable", "first_layer_only"], "passed"),
        (set(), ["enable"], "passed"),  # enable passes: nothing quantized twice
        ({"enable", "first_layer_only"}, ["enable", "first_layer_only"], "failed"),
        # (VNNI: the one fix, no second try: test_overflow_fix_auto_follows_the_int8_unit)
    ],
)
def test_int8_overflow_fix_falls_back_on_parity(cpu_export, tmp_path, monkeypatch, failing, tried, kept):
    """``overflow_fix: auto`` on a CPU without VNNI: an INT8 that fails parity with ``enable`` is quantized again
    with ``first_layer_only``; the manifest and parity.md keep the replaced try and why."""
    import nncf

    import export.convert
    import export.run

    ckpt = cpu_export[0]
    quantized = []

    def fake_quantize(model, dataset, **kw):  # records the fix; the float graph passes parity by itself
        quantized.append(kw["advanced_parameters"].overflow_fix.value)
        return model

    real_check = export.run.check
    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    monkeypatch.setattr(
        export.run, "check", lambda m, b: ["forced"] if quantized[-1] in failing else real_check(m, b)
    )
    monkeypatch.setattr(export.convert, "cpu_flags", lambda: ["avx2", "fma"])  # no VNNI
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    out = tmp_path / "export"
    if kept == "failed":
        with pytest.raises(export.run.ParityError, match="openvino_int8: forced"):
            export_tiny(tmp_path, ckpt, ["openvino_int8"], ["select.enabled=false"])
        manifest = json.loads((out / "sigdet_export.json").read_text())
    else:
        manifest = export_tiny(tmp_path, ckpt, ["openvino_int8"], ["select.enabled=false"])[2]
    assert quantized == tried
    (int8,) = manifest["artifacts"]
    assert int8["status"] == kept and int8["overflow_fix"] == tried[-1]
    replaced = int8.get("overflow_fix_tried", [])
    assert [t["overflow_fix"] for t in replaced] == tried[:-1]
    assert all(t["status"] == "replaced" and t["reason"] == "forced" and "path" not in t for t in replaced)
    if replaced:
        assert "failed parity" in int8["overflow_fix_why"]
        table = (out / "parity.md").read_text()
        assert "openvino_int8 (overflow_fix=enable) | replaced" in table
    where = out / ("failed" if kept == "failed" else ".") / "openvino_int8" / "model.xml"
    assert where.is_file() and len(list(out.rglob("model.xml"))) == 1


def test_bad_int8_preset_raises(cpu_export, tmp_path, monkeypatch):
    import nncf

    from export.convert import to_openvino
    from training.cli import ConfigError
    from training.inference.families import load_family

    ckpt, out, _ = cpu_export
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("quantized with a bad preset"))
    family = load_family(ckpt, decode_table())
    calib = [family.feeds(VALID[0])[0]]
    with pytest.raises(ValueError, match="fastest"):
        to_openvino(out / "model.onnx", tmp_path / "x.xml", family, "int8", calib, {"preset": "fastest"})
    # the command refuses it before any work, with one line, whatever the formats
    with pytest.raises(ConfigError, match="openvino.int8.preset='fastest'.*performance") as e:
        export_tiny(tmp_path, ckpt, ["onnx"], ["openvino.int8.preset=fastest"])
    assert "\n" not in str(e.value) and not (tmp_path / "export").exists()
    with pytest.raises(ConfigError, match="openvino.int8.overflow_fix='half'.*first_layer_only") as e:
        export_tiny(tmp_path, ckpt, ["onnx"], ["openvino.int8.overflow_fix=half"])
    assert "\n" not in str(e.value) and not (tmp_path / "export").exists()


# ---------------------------------------------------------------- the CPU path in the manifest


def test_manifest_records_the_fastest_cpu_path(cpu_export):
    from training.inference.exported import META
    from training.inference.runtimes import bf16_supported

    _, out, manifest = cpu_export
    statuses = {a["format"]: a["status"] for a in manifest["artifacts"]}
    assert statuses == dict.fromkeys(CPU_FORMATS, "passed"), manifest
    choice = manifest["cpu_choice"]
    assert set(choice) == {"format", "path", "e2e_p50_ms", "timings_ms", "why"}
    assert set(choice["timings_ms"]) == set(CPU_FORMATS)
    assert all(v > 0 for v in choice["timings_ms"].values())
    assert choice["format"] == min(choice["timings_ms"], key=choice["timings_ms"].get)
    assert choice["e2e_p50_ms"] == choice["timings_ms"][choice["format"]]
    assert choice["path"] == _artifact(manifest, choice["format"])["path"]
    assert (out / choice["path"]).is_file()
    assert isinstance(choice["why"], str) and "fastest" in choice["why"]
    # the manifest on disk is the one returned
    assert json.loads((out / META).read_text())["cpu_choice"] == choice
    # OpenVINO artifacts: the hint they ran with and the uint8 page (conf/export.yaml openvino.u8_input: true)
    fp32, int8 = _artifact(manifest, "openvino_fp32"), _artifact(manifest, "openvino_int8")
    assert fp32["inference_precision"] == "f32"
    assert int8["inference_precision"] == ("bf16" if bf16_supported()[0] else "f32")
    assert fp32["u8_input"] is True and int8["u8_input"] is True
    assert "inference_precision" not in _artifact(manifest, "onnx")
    # the INT8 artifact says which overflow fix NNCF applied on this CPU, and why
    from export.convert import overflow_fix

    assert (int8["overflow_fix"], int8["overflow_fix_why"]) == overflow_fix("auto")
    assert "overflow_fix" not in fp32


def test_export_folder_loads_the_chosen_path(cpu_export, tmp_path):
    from training.inference.exported import is_exported, load_exported

    _, out, manifest = cpu_export
    choice = manifest["cpu_choice"]
    assert is_exported(out) and is_exported(str(out))
    assert not is_exported(tmp_path)  # a folder without a manifest
    model = load_exported(out)
    assert model.checkpoint == out / choice["path"]
    fmt = choice["format"]
    assert model.format == (fmt if fmt == "onnx" else f"openvino_{fmt.split('_')[1]}")
    if fmt.startswith("openvino"):
        assert model.runner.u8_input
    direct = load_exported(out / choice["path"])
    got, ref = model.predict(VALID[:2], conf=0.01), direct.predict(VALID[:2], conf=0.01)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.boxes, r.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-5)


def test_evaluator_runs_the_export_folder(cpu_export, tmp_path):
    from evaluation.__main__ import evaluate_checkpoint

    _, out, manifest = cpu_export
    cfg = compose_cfg(
        "evaluate",
        [f"checkpoint={out}", "evaluation.n_bootstrap=0", "evaluation.splits=[val]"],
        tmp_path,
    )
    m = evaluate_checkpoint(cfg)
    entry = _artifact(manifest, manifest["cpu_choice"]["format"])
    assert m["val/mAP50"] == pytest.approx(entry["parity"]["export/mAP50"], abs=1e-9)
    prov = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert prov["checkpoint"].endswith(manifest["cpu_choice"]["path"])


# ---------------------------------------------------------------- rectangular inputs


def test_rectangular_export_without_selection(cpu_export, tmp_path):
    import onnx

    from training.inference.exported import META, is_exported, load_exported

    ckpt, _, _ = cpu_export
    _, out, manifest = export_tiny(tmp_path, ckpt, ["onnx"], ["input_hw=[64,96]", "select.enabled=false"])
    assert _artifact(manifest, "onnx")["status"] == "passed", manifest
    assert "cpu_choice" not in manifest
    square = manifest["reference_square"]  # the same PyTorch model on the training square (64)
    assert {"mAP50", "mAP50-95", "f1"} <= set(square) and square.get("imgsz", 64) == 64
    meta = json.loads((out / META).read_text())
    assert meta["options"]["input_hw"] == [64, 96] and meta["imgsz"] == 96
    assert "cpu_choice" not in meta and meta["reference_square"] == manifest["reference_square"]
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 96]
    # a folder with no chosen CPU path is not loadable as a folder; its files are
    assert is_exported(out)
    with pytest.raises(UserError, match="chose no CPU path"):
        load_exported(out)
    model = load_exported(out / "model.onnx")
    assert model.family.input_hw == (64, 96)
    feeds, _ = model.feeds(VALID[0])
    assert feeds["images"].shape == (1, 3, 64, 96)
    page = Image.open(VALID[0])
    (det,) = model.predict([VALID[0]], conf=0.001)
    assert len(det) > 0
    assert (det.boxes >= 0).all() and (det.boxes[:, [0, 2]] <= page.width).all()
    assert (det.boxes[:, [1, 3]] <= page.height).all()


@pytest.mark.parametrize("hw", [[50, 64], [64, 100], [64], [16, 32], "dynamik"], ids=str)
def test_bad_input_hw_is_one_line(cpu_export, tmp_path, hw):
    from training.inference.families import load_family

    ckpt, _, _ = cpu_export
    with pytest.raises(UserError, match="multiples of 32") as e:
        load_family(ckpt, decode_table(), input_hw=hw)
    assert "\n" not in str(e.value)
    if hw == [50, 64]:  # and from the command's config key, before anything is written
        with pytest.raises(UserError, match="multiples of 32") as e:
            export_tiny(tmp_path, ckpt, ["onnx"], [f"input_hw=[{','.join(map(str, hw))}]"])
        assert "\n" not in str(e.value) and not (tmp_path / "export" / "model.onnx").exists()


@pytest.mark.slow  # 15 s: keeps the default suite under 10 minutes on 2 cores
def test_dynamic_input_export(cpu_export, tmp_path):
    """``input_hw=dynamic``: one graph with symbolic height and width; each page letterboxed into its own
    rectangle (long side ``imgsz``, the other padded to 32) on every runtime, INT8 calibrated across shapes; the
    same boxes as the PyTorch module on the same input; the latency benchmark times an A4 portrait page model-only
    and end to end at its own shape, with its FLOPs at that shape."""
    import onnx

    from export.benchmark import benchmark_export, onnx_flops
    from training.inference.exported import META, load_exported, reference_model
    from training.inference.families import load_family

    ckpt, _, _ = cpu_export
    _, out, manifest = export_tiny(
        tmp_path, ckpt, CPU_FORMATS, ["input_hw=dynamic", "imgsz=128", "select.enabled=false"]
    )
    assert all(a["status"] == "passed" for a in manifest["artifacts"]), manifest
    assert manifest["reference_square"]["imgsz"] == 128
    meta = json.loads((out / META).read_text())
    assert meta["options"]["input_hw"] == "dynamic" and meta["imgsz"] == 128
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3, "height", "width"]
    ref = reference_model(load_family(ckpt, decode_table(), imgsz=128, input_hw="dynamic"))
    # real pages cut to a narrow portrait (h 630 x w 300 -> 128 x 61, padded to 128 x 64) and turned to a
    # landscape strip (h 300 x w 900 -> 43 x 128, padded to 64 x 128)
    page = Image.open(VALID[0]).convert("RGB").resize((480, 630))
    portrait = page.crop((90, 0, 390, 630))
    landscape = page.transpose(Image.Transpose.ROTATE_90).resize((900, 300))
    for path in ("model.onnx", "openvino_fp32/model.xml", "openvino_int8/model.xml"):
        model = load_exported(out / path)
        assert model.family.dynamic_hw and model.family.input_hw == (128, 128)
        u8 = getattr(model.runner, "u8_input", False)  # uint8 NHWC, else float NCHW
        hw = [
            model.feeds(page)[0]["images"].shape[1:3] if u8 else model.feeds(page)[0]["images"].shape[2:]
            for page in (portrait, landscape)
        ]
        assert hw == [(128, 64), (64, 128)], (path, hw)
        if path != "openvino_int8/model.xml":  # the float graphs give the module's boxes on every shape
            for page in (portrait, landscape):
                (a,), (b,) = model.predict([page], conf=0.001), ref.predict([page], conf=0.001)
                assert len(a) == len(b) > 0
                np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
                np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    bcfg = compose_cfg(
        "export_benchmark", [f"export_dir={out}", *BENCH_TINY, "throughput_seconds=0"], tmp_path
    )
    doc = benchmark_export(out, bcfg)
    assert doc["input_hw"] == "dynamic"
    assert doc["timed_input_shapes"] == {"images": [1, 3, 128, 96]}  # A4 portrait: 128 x 91 -> 128 x 96
    square = onnx_flops(out / "model.onnx", {"images": (1, 3, 128, 128)})
    assert doc["gflops"] * 1e9 == pytest.approx(
        0.75 * square, rel=1e-9
    )  # every convolution scales with h x w
    assert onnx_flops(out / "model.onnx") is None  # symbolic shapes and no input given: no count


def test_tensorrt_profile_shapes():
    """TensorRT's optimisation profile: a static input needs none; a dynamic batch runs 1..max_batch; a
    dynamic input's sides run from a quarter of the input (4:1 pages) to it, optimised for the full size."""
    from export.convert import profile_shapes

    assert profile_shapes((1, 3, 640, 640), 8, (640, 640)) is None
    assert profile_shapes((-1, 3, 640, 480), 8, (640, 480)) == (
        (1, 3, 640, 480),
        (1, 3, 640, 480),
        (8, 3, 640, 480),
    )
    lo, opt, hi = profile_shapes((1, 3, -1, -1), 8, (640, 640))
    assert lo == (1, 3, 160, 160) and opt == hi == (1, 3, 640, 640)
    assert profile_shapes((-1, 3, -1, -1), 4, (64, 64))[0] == (1, 3, 32, 32)  # never below one stride
    with pytest.raises(ValueError, match="symbolic axis 1"):
        profile_shapes((1, -1, 64, 64), 8, (64, 64))


# ---------------------------------------------------------------- CPU peak and FLOPs


@pytest.fixture
def fake_cpu(monkeypatch):
    import evaluation.latency as lat

    info = {"cpu MHz": "1000", "flags": "fpu sse avx2 fma amx_int8 avx512f"}
    monkeypatch.setattr(lat, "_cpuinfo", lambda key: info.get(key))
    monkeypatch.setattr(lat, "cpu_flags", lambda: info["flags"].split())
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(lat, "physical_cores", lambda: 2)
    return info


@pytest.mark.parametrize(
    "precision, flags, ops, unit",
    [
        ("int8", ["avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"], 2048, "amx_int8"),
        ("int8", ["avx2", "fma"], 64, "avx2"),
        ("int8", ["avx2", "avx_vnni"], 128, "avx_vnni"),
        ("int8", ["avx2", "avx512f", "avx512_vnni"], 256, "avx512_vnni"),
        ("fp32", ["avx2", "avx512f"], 64, "avx512f"),
        ("fp32", ["avx2", "amx_int8"], 32, "avx2"),
        ("bf16", ["avx512f", "avx512_bf16", "amx_bf16"], 1024, "amx_bf16"),
        ("bf16", ["avx512f", "avx512_bf16"], 128, "avx512_bf16"),
    ],
)
def test_cpu_peak_by_best_unit(fake_cpu, precision, flags, ops, unit):
    from evaluation.latency import cpu_peak

    peak, how = cpu_peak(precision, flags)
    assert peak == 2 * 1000e6 * ops
    assert unit in how and "2 cores" in how and "1000 MHz" in how


def test_cpu_peak_unknown(fake_cpu, monkeypatch):
    import evaluation.latency as lat

    assert lat.cpu_peak("bf16", ["avx2", "avx512f", "amx_int8"]) == (None, "no bf16 unit known for this CPU")
    assert lat.cpu_peak("int8", [])[0] is None
    assert lat.cpu_peak("fp32", ["sse4_2"])[0] is None
    # flags default to /proc/cpuinfo's (here: the fake one)
    assert lat.cpu_peak("int8")[0] == 2 * 1000e6 * 2048
    assert lat.cpu_peak("fp32")[0] == 2 * 1000e6 * 64
    # runtimes limited to fewer threads than cores: the peak of the cores they could use (16-core host, 2 threads)
    monkeypatch.setattr(lat, "physical_cores", lambda: 16)
    peak, how = lat.cpu_peak("int8", threads=2)
    assert peak == 2 * 1000e6 * 2048 and "2 cores" in how
    assert lat.cpu_peak("int8", threads=32)[0] == lat.cpu_peak("int8")[0] == 16 * 1000e6 * 2048
    # no clock: unknown, whatever the flags
    monkeypatch.setattr(lat, "_cpuinfo", lambda key: None)
    assert lat.cpu_peak("int8", ["amx_int8"])[0] is None


def test_physical_cores_counts_each_core_once(tmp_path, monkeypatch):
    """Two hyper-threads of one core share its units: the peak counts the core once; CPUs outside the
    affinity mask are not counted."""
    import builtins

    import evaluation.latency as lat

    blocks = [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1), (4, 1, 0)]  # (processor, physical id, core id)
    text = "".join(f"processor\t: {p}\nphysical id\t: {s}\ncore id\t\t: {c}\n\n" for p, s, c in blocks)
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda f, *a, **k: real_open(fake if f == "/proc/cpuinfo" else f, *a, **k)
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert lat.physical_cores() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert lat.physical_cores() == 1


def test_environment_records_isa_and_clock(fake_cpu):
    from evaluation.latency import environment

    env = environment()
    assert env["cpu_mhz"] == "1000"
    assert env["cpu_isa"] == "avx2 fma avx512f amx_int8"  # ISA_FLAGS' order, the rest left out
    assert env["cpu_count"] == 2


def test_onnx_flops_counts_conv_groupconv_and_matmul(tmp_path):
    pytest.importorskip("openvino")
    import torch

    from export.benchmark import onnx_flops

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = torch.nn.Linear(8 * 16 * 16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.dw(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.rand(1, 3, 16, 16),), str(path), opset_version=17, dynamo=False)
    conv = 2 * (8 * 16 * 16) * (3 * 3 * 3)  # output elements x (in channels x kernel)
    dw = 2 * (8 * 16 * 16) * (1 * 3 * 3)  # one input channel per group
    fc = 2 * 10 * (8 * 16 * 16)
    assert onnx_flops(path) == conv + dw + fc
    # a dynamic batch: no static count
    dyn = tmp_path / "dyn.onnx"
    torch.onnx.export(
        Net().eval(),
        (torch.rand(1, 3, 16, 16),),
        str(dyn),
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    assert onnx_flops(dyn) is None
    # a damaged file: None, not a crash
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf")
    assert onnx_flops(bad) is None


def test_kernel_shares_group_by_precision_suffix():
    from export.benchmark import _kernel_shares

    shares = _kernel_shares(
        {
            "brgconv_avx512_amx_I8": 3.0,
            "jit_avx512_i8": 1.0,
            "gemm_u8": 1.0,
            "brgemm_avx512_amx_bf16": 2.0,
            "jit_avx512_f32": 1.5,
            "ref_any_F32": 0.5,
            "unknown": 0.6,
            "reorder_fp16": 0.4,
        }
    )
    assert set(shares) == {"int8", "bf16", "fp32", "other"}
    assert shares == pytest.approx({"int8": 0.5, "bf16": 0.2, "fp32": 0.2, "other": 0.1})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert _kernel_shares({}) == {"int8": 0.0, "bf16": 0.0, "fp32": 0.0, "other": 0.0}


# ---------------------------------------------------------------- the latency command with the CPU columns


def test_benchmark_throughput_kernels_peak_and_accuracy(cpu_export, tmp_path):
    from export.benchmark import benchmark_export, onnx_flops

    _, out, manifest = cpu_export
    over = ["throughput_seconds=0.3", "profile=true", "accuracy=true"]
    cfg = compose_cfg("export_benchmark", [f"export_dir={out}", *BENCH_TINY, *over], tmp_path)
    doc = benchmark_export(out, cfg)
    rows = {(r["runtime"], r["device"], r["precision"]): r for r in doc["rows"]}
    ov = {p: rows[("OpenVINO", "CPU", p)] for p in ("fp32", "int8")}
    for prec, r in ov.items():
        assert r["status"] == "ok", r
        assert r["throughput/pages_per_s"] > 0 and r["throughput/mode"] == "async"
        assert r["throughput/requests"] >= 1 and r["throughput/streams"] >= 1
        assert r["kernels"] and sum(r["kernel_shares"].values()) == pytest.approx(1.0)
        assert 0.0 <= r["val/mAP50"] <= 1.0 and "val/mAP50-95" in r
        # the accuracy of the row is the export's parity accuracy (same model, same val split, same decoding)
        assert r["val/mAP50"] == pytest.approx(
            _artifact(manifest, f"openvino_{prec}")["parity"]["export/mAP50"], abs=1e-6
        )
    # INT8 runs INT8 kernels; FP32 runs FP32 ones (its only "I8" kernels are the uint8 page's in-graph
    # transpose / conversion: a few percent)
    assert ov["int8"]["kernel_shares"]["int8"] > 0.5, ov["int8"]["kernels"]
    assert ov["fp32"]["kernel_shares"]["fp32"] > 0.8, ov["fp32"]["kernels"]
    assert ov["fp32"]["kernel_shares"]["int8"] < 0.1, ov["fp32"]["kernels"]
    # no BF16 in this export: a row that says so
    assert rows[("OpenVINO", "CPU", "bf16")]["status"] == "unavailable"
    for key in (("PyTorch eager", "CPU", "fp32"), ("ONNX Runtime", "CPU", "fp32")):
        r = rows[key]
        assert r["status"] == "ok" and r["throughput/mode"] == "sync" and "val/mAP50" in r
        assert r["throughput/pages_per_s"] == pytest.approx(1000.0 / r["model/mean_ms"])
        assert "kernel_shares" not in r
    # % of peak: FLOPs of model.onnx / model p50 / the CPU's peak in the row's precision, where it is known
    flops = onnx_flops(out / "model.onnx")
    assert flops and doc["gflops"] == pytest.approx(flops / 1e9)
    for r in doc["rows"]:
        if r["status"] != "ok":
            assert "peak_fraction" not in r
            continue
        peak = doc["peaks"].get(r["precision"], {}).get("ops_per_s")
        if r["device"] == "CPU" and peak:
            assert r["peak_fraction"] == pytest.approx(flops / (r["model/p50_ms"] / 1000.0) / peak)
            assert r["peak_fraction"] > 0
        else:
            assert "peak_fraction" not in r
    md = (tmp_path / "run" / "latency.md").read_text()
    assert "OPTIMIZATION_CAPABILITIES" in md and "% of peak" in md and "pages/s" in md
    assert "Where OpenVINO spends the time" in md
    saved = json.loads((tmp_path / "run" / "latency.json").read_text())
    assert saved["gflops"] == pytest.approx(doc["gflops"]) and "cpu_isa" in saved["environment"]


def test_yolov8n_flops_scale_with_the_input(cpu_export):
    """Sanity of the FLOP count on a real graph: YOLOv8n is ~8.7 GFLOPs at 640 px (ultralytics' model card,
    80 classes); our single-class model at 64 px is ~1/100 of it."""
    from export.benchmark import onnx_flops

    _, out, _ = cpu_export
    gflops = onnx_flops(out / "model.onnx") / 1e9
    assert 0.05 < gflops < 0.1, gflops


# ---------------------------------------------------------------- ultralytics' own exports (slow)


@pytest.mark.slow
def test_ultralytics_peers(cpu_export, tmp_path):
    from evaluation.metrics import iou_matrix
    from export.benchmark import benchmark_export
    from export.peers import UltralyticsPeer, export_peer
    from training.inference.exported import load_exported

    ckpt, out, _ = cpu_export
    over = ["throughput_seconds=0", "accuracy=true", "peers=[ultralytics_onnx,ultralytics_openvino_int8]"]
    cfg = compose_cfg("export_benchmark", [f"export_dir={out}", *BENCH_TINY, *over], tmp_path)
    doc = benchmark_export(out, cfg)
    rows = {r["runtime"]: r for r in doc["rows"]}
    for name, prec in (
        ("ultralytics onnx (its predictor)", "fp32"),
        ("ultralytics openvino_int8 (its predictor)", "int8"),
    ):
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["device"] == "CPU" and r["precision"] == prec
        assert r["e2e/p50_ms"] > 0 and r["model/p50_ms"] > 0 and r["e2e/runs"] >= 2
        assert 0.0 <= r["val/mAP50"] <= 1.0
    md = (tmp_path / "run" / "latency.md").read_text()
    assert "ultralytics onnx (its predictor)" in md

    # ultralytics' predictor gives boxes in the original frame, where ours are: the same top box. A model
    # trained 2 epochs at 64 px rarely scores 0.25; then the top box of the low-confidence candidates (the
    # same raw outputs, so the same box survives both NMS) is what is compared
    family = load_exported(out / "model.onnx").family
    peer = UltralyticsPeer(
        export_peer("ultralytics_onnx", ckpt, family.imgsz, None, tmp_path / "peer"),
        family.imgsz,
        family.class_names,
    )
    ours = load_exported(out / "model.onnx")
    for image in VALID[:4]:
        w, h = Image.open(image).size
        (theirs,) = peer.predict([image], conf=0.25)
        (mine,) = ours.predict([image], conf=0.25)
        if len(theirs) == 0 and len(mine) == 0:
            (theirs,) = peer.predict([image], conf=0.001)
            (mine,) = ours.predict([image], conf=0.001)
            if len(theirs) == 0 and len(mine) == 0:
                continue
        assert len(theirs) and len(mine), (theirs, mine)
        for d in (theirs, mine):
            assert (d.boxes >= -1e-3).all()
            assert (d.boxes[:, [0, 2]] <= w + 1e-3).all() and (d.boxes[:, [1, 3]] <= h + 1e-3).all()
        i, j = np.argmax(theirs.scores), np.argmax(mine.scores)
        assert theirs.scores[i] == pytest.approx(mine.scores[j], abs=1e-3)
        iou = iou_matrix(theirs.boxes[i : i + 1], mine.boxes[j : j + 1])[0, 0]
        assert iou > 0.9, (theirs.boxes[i], mine.boxes[j])


@pytest.mark.slow
def test_ultralytics_dynamic_peer_letterboxes_like_ours(cpu_export, tmp_path):
    """A dynamic export and ultralytics' own dynamic export run each page at the same rectangle, and the peer
    keeps it for every page of a list (its predictor squares a list of pages of different sizes)."""
    from export.peers import UltralyticsPeer, export_peer
    from training.inference.exported import load_exported

    ckpt, _, _ = cpu_export
    _, out, _ = export_tiny(
        tmp_path, ckpt, ["onnx"], ["input_hw=dynamic", "imgsz=128", "select.enabled=false"]
    )
    ours = load_exported(out / "model.onnx")
    path = export_peer("ultralytics_onnx", ckpt, 128, None, tmp_path / "peer", dynamic=True)
    peer = UltralyticsPeer(path, 128, ours.family.class_names)
    page = Image.open(VALID[0]).convert("RGB").resize((480, 630))
    pages = [page.crop((90, 0, 390, 630)), page.transpose(Image.Transpose.ROTATE_90).resize((900, 300))]
    for p in pages:
        peer.timing_page = np.asarray(p)
        peer.benchmark_forward()  # sets up the predictor on this page
        theirs = peer.yolo.predictor.preprocess([peer._bgr(p)])
        assert tuple(theirs.shape) == ours.feeds(p)[0]["images"].shape  # (1, 3, 128, 64) / (1, 3, 64, 128)
    together = peer.predict(pages, conf=0.001)
    alone = [peer.predict([p], conf=0.001)[0] for p in pages]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
