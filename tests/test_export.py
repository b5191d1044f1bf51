"""Export round trips (one model per family + the classifier), parity checks, a deliberately corrupted export,
the evaluator on exported models, and the latency command with tiny run counts. GPU paths are marked ``gpu``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    CROPS_TINY,
    EMBEDDED,
    HF_TINY,
    ROOT,
    TINY,
    compose_cfg,
    decode_table,
    export_tiny,
    run_module,
)
from training.cli import UserError


def _statuses(manifest):
    return {a["format"]: a["status"] for a in manifest["artifacts"]}


@pytest.fixture(scope="module")
def yolo_export(tmp_path_factory, trained_run):
    """A trained tiny YOLOv8n exported to ONNX, OpenVINO FP32 / BF16 (where supported) / INT8."""
    _, run_dir, _ = trained_run
    tmp = tmp_path_factory.mktemp("yolo_export")
    cfg, out, manifest = export_tiny(
        tmp, run_dir / "weights" / "best.pt", ["onnx", "openvino_fp32", "openvino_bf16", "openvino_int8"]
    )
    return run_dir, out, manifest


def test_yolo_export_round_trip_passes_parity(yolo_export):
    from training.inference.exported import load_exported, reference_model
    from training.inference.families import load_family

    run_dir, out, manifest = yolo_export
    st = _statuses(manifest)
    assert st["onnx"] == st["openvino_fp32"] == st["openvino_int8"] == "passed", manifest
    assert st["openvino_bf16"] in ("passed", "unavailable")
    for f in (
        "model.onnx",
        "openvino_fp32/model.xml",
        "openvino_int8/model.xml",
        "sigdet_export.json",
        "parity.md",
    ):
        assert (out / f).is_file(), f
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    assert onnx["parity"]["raw_diff"] < 1e-4 and onnx["parity"]["match_rate"] == 1.0
    # the same image gives the same boxes on PyTorch, ONNX Runtime and OpenVINO (shared pre/post-processing)
    image = sorted((EMBEDDED / "valid").glob("*.jpg"))[0]
    ref = reference_model(load_family(run_dir / "weights" / "best.pt", decode_table())).predict(
        [image], conf=0.01
    )[0]
    for path in ("model.onnx", "openvino_fp32/model.xml"):
        got = load_exported(out / path).predict([image], conf=0.01)[0]
        assert len(got) == len(ref)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.05)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)


def test_evaluator_accepts_exported_models(yolo_export, tmp_path):
    from evaluation.__main__ import evaluate_checkpoint

    _, out, manifest = yolo_export
    for path in ("model.onnx", "openvino_int8/model.xml"):
        cfg = compose_cfg(
            "evaluate",
            [f"checkpoint={out / path}", "evaluation.n_bootstrap=0", "evaluation.splits=[val]"],
            tmp_path / path.replace("/", "_"),
        )
        m = evaluate_checkpoint(cfg)
        fmt = "onnx" if path.endswith("onnx") else "openvino_int8"
        entry = next(a for a in manifest["artifacts"] if a["format"] == fmt)
        assert m["val/mAP50"] == pytest.approx(entry["parity"]["export/mAP50"], abs=1e-9)
        assert json.loads((tmp_path / path.replace("/", "_") / "run" / "metrics.json").read_text())[
            "provenance"
        ]["checkpoint"].endswith(path)


def test_corrupted_export_fails_parity_loudly(trained_run, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import export.run as run
    from training.inference.exported import load_exported

    real = run.to_onnx

    def corrupt(family, path, opset=17, dynamic=False):
        real(family, path, opset, dynamic)
        m = onnx.load(str(path))
        for init in m.graph.initializer:  # every conv weight scrambled: same graph, wrong numbers
            w = numpy_helper.to_array(init)
            if w.ndim == 4:
                init.CopyFrom(
                    numpy_helper.from_array(
                        np.random.default_rng(0).permutation(w.ravel()).reshape(w.shape), init.name
                    )
                )
        onnx.save(m, str(path))
        return path

    monkeypatch.setattr(run, "to_onnx", corrupt)
    _, run_dir, _ = trained_run
    with pytest.raises(run.ParityError, match="export parity failed for onnx"):
        export_tiny(tmp_path, run_dir / "weights" / "best.pt", ["onnx"])
    out = tmp_path / "export"
    manifest = json.loads((out / "sigdet_export.json").read_text())
    entry = manifest["artifacts"][0]
    assert entry["status"] == "failed" and "raw_diff" in entry["reason"]
    assert not (out / "model.onnx").exists() and (out / "failed" / "model.onnx").is_file()
    with pytest.raises(UserError, match="failed its parity check"):
        # the manifest entry still names it: put it back where it was and try to load it
        (out / "failed" / "model.onnx").rename(out / "model.onnx")
        load_exported(out / "model.onnx")


def test_transformers_export_round_trip(tmp_path):
    from evaluation.run import evaluate_run, validator
    from training.train import train

    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY], tmp_path / "train")
    train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    ckpt = Path(cfg.paths.run_dir) / "weights" / "best"
    _, out, manifest = export_tiny(tmp_path, ckpt, ["onnx", "openvino_fp32"])
    assert _statuses(manifest) == {"onnx": "passed", "openvino_fp32": "passed"}, manifest
    meta = json.loads((out / "sigdet_export.json").read_text())
    assert meta["kind"] == "transformers" and meta["input_names"] == ["pixel_values", "pixel_mask"]
    # the backend's own export_spec is what python -m export traced: same inputs, outputs and options
    from training.backends import build_detector

    det = build_detector(cfg.model, tmp_path / "det")
    det.load(ckpt, device="cpu")
    spec = det.export_spec()
    assert (spec.input_names, spec.output_names) == (meta["input_names"], meta["output_names"])
    assert spec.options == meta["options"] and spec.int8 == {"model_type": "transformer"}


def test_classifier_export_round_trip(tmp_path):
    from training.classifier.model import RegionClassifier
    from training.inference.exported import load_exported

    torch.manual_seed(0)
    ckpt = RegionClassifier(["signature", "stamp", "thumb"], 32).save(tmp_path / "clf.pt")
    _, out, manifest = export_tiny(tmp_path, ckpt, ["onnx", "openvino_fp32", "openvino_int8"], CROPS_TINY)
    st = _statuses(manifest)
    assert st["onnx"] == st["openvino_fp32"] == "passed", manifest
    int8 = next(a for a in manifest["artifacts"] if a["format"] == "openvino_int8")
    # an untrained 32 px net may not survive INT8: then it is reported as failed, with the parity that failed
    assert int8["status"] == "passed" or (int8["status"] == "failed" and int8.get("reason")), int8
    assert "parity" in int8
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    assert onnx["parity"]["top1_agreement"] == 1.0
    model = load_exported(out / "model.onnx")
    probs = model.predict_proba([np.full((40, 90, 3), 200, np.uint8)])
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    # dynamic batch: one graph, any batch size
    _, out2, manifest2 = export_tiny(
        tmp_path, ckpt, ["onnx"], [*CROPS_TINY, "dynamic=true", "opset=18"], sub="dyn"
    )
    assert _statuses(manifest2) == {"onnx": "passed"} and manifest2["opset"] == 18
    dyn = load_exported(out2 / "model.onnx")
    feeds = dyn.family.batch_feeds([np.full((40, 90, 3), v, np.uint8) for v in (10, 200, 90)])
    assert dyn.runner(feeds)[0].shape == (3, 3)


def test_latency_command_writes_its_tables(yolo_export, tmp_path):
    from export.benchmark import benchmark_export

    _, out, _ = yolo_export
    cfg = compose_cfg(
        "export_benchmark", [f"export_dir={out}", "warmup=1", "min_runs=2", "min_seconds=0"], tmp_path
    )
    doc = benchmark_export(out, cfg)
    rows = {(r["runtime"], r["device"], r["precision"]): r for r in doc["rows"]}
    for key in (
        ("PyTorch eager", "CPU", "fp32"),
        ("ONNX Runtime", "CPU", "fp32"),
        ("OpenVINO", "CPU", "fp32"),
        ("OpenVINO", "CPU", "int8"),
    ):
        r = rows[key]
        assert r["status"] == "ok" and r["model/runs"] >= 2 and r["e2e/p50_ms"] > 0, key
        assert {"model/p90_ms", "model/p99_ms", "model/std_ms", "e2e/mean_ms"} <= set(r)
    if not torch.cuda.is_available():
        for prec in ("fp32", "fp16"):
            r = rows[("TensorRT", "CUDA", prec)]
            assert r["status"] == "unavailable" and "CUDA" in r["reason"] and "e2e/p50_ms" not in r
    run_dir = tmp_path / "run"
    for f in ("latency.md", "latency.csv", "latency.json", "latency_onnx_vs_tensorrt.csv"):
        assert (run_dir / f).is_file(), f
    md = (run_dir / "latency.md").read_text()
    assert "ONNX (CPU) vs TensorRT (GPU)" in md
    assert f"CPU: {doc['environment']['cpu']} ({doc['environment']['cpu_count']} cores)" in md
    assert [r["runtime"] for r in doc["upstream"]] == ["ONNX Runtime (CPU)", "TensorRT (GPU)"]
    assert doc["environment"]["version/onnxruntime"]


def test_export_cli_bad_checkpoint_is_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            f"checkpoint={tmp_path / 'nope.pt'}",
            f"hydra.run.dir={tmp_path / 'x'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 2 and "nope.pt: checkpoint not found" in r.stderr and "Traceback" not in r.stderr


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt(), reason="needs CUDA and the tensorrt package")
def test_tensorrt_export_and_latency(trained_run, tmp_path):
    from export.benchmark import benchmark_export

    _, run_dir, _ = trained_run
    _, out, manifest = export_tiny(
        tmp_path, run_dir / "weights" / "best.pt", ["onnx", "tensorrt_fp32", "tensorrt_fp16"]
    )
    assert _statuses(manifest) == {"onnx": "passed", "tensorrt_fp32": "passed", "tensorrt_fp16": "passed"}, (
        manifest
    )
    cfg = compose_cfg(
        "export_benchmark", [f"export_dir={out}", "warmup=2", "min_runs=5", "min_seconds=0"], tmp_path
    )
    doc = benchmark_export(out, cfg)
    trt = [r for r in doc["rows"] if r["runtime"] == "TensorRT"]
    assert all(r["status"] == "ok" for r in trt)
    assert doc["upstream"][1]["inference p50 (ms)"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pytorch_cuda_reference_matches_cpu(trained_run):
    from training.inference.exported import reference_model
    from training.inference.families import load_family

    _, run_dir, _ = trained_run
    image = sorted((EMBEDDED / "valid").glob("*.jpg"))[0]
    cpu = reference_model(load_family(run_dir / "weights" / "best.pt", decode_table())).predict(
        [image], conf=0.05
    )[0]
    gpu = reference_model(load_family(run_dir / "weights" / "best.pt", decode_table()), "cuda").predict(
        [image], conf=0.05
    )[0]
    np.testing.assert_allclose(gpu.scores[:5], cpu.scores[:5], atol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=debug/conditional-detr", *HF_TINY],
        ["model=debug/yolos", *HF_TINY],
        ["experiment=quickstart", "model=yolov10n", *TINY],
        # a 32M-parameter model: half a minute, so in the slow run
        pytest.param(["experiment=quickstart", "model=rtdetr-l", *TINY], marks=pytest.mark.slow),
        # the frontier families (their ONNX parity is in the contract tests)
        *(
            pytest.param([f"model=debug/{name}", *HF_TINY], marks=pytest.mark.slow)
            for name in ("d_fine", "deimv2", "rf_detr", "rt_detr_v2")
        ),
        pytest.param(["experiment=quickstart", "model=yolo26n", *TINY], marks=pytest.mark.slow),
    ],
    ids=[
        "conditional-detr",
        "yolos",
        "yolov10n",
        "rtdetr-l",
        "d_fine",
        "deimv2",
        "rf_detr",
        "rt_detr_v2",
        "yolo26n",
    ],
)
def test_every_other_family_exports(overrides, tmp_path):
    """The remaining heads (sigmoid top-k decoding, no pixel mask, YOLOv10, RT-DETR queries, the frontier families)
    export to ONNX and OpenVINO and pass the FP32 parity check with the default bounds: the two-stage DETRs pick
    their queries in index order among ties, in PyTorch as in both runtimes (their raw outputs were 0.4 to 0.9
    apart before)."""
    from evaluation.run import evaluate_run, validator
    from training.train import train

    cfg = compose_cfg("train", overrides, tmp_path / "train")
    train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    run = Path(cfg.paths.run_dir) / "weights"
    ckpt = run / "best" if (run / "best").is_dir() else run / "best.pt"
    _, _, manifest = export_tiny(tmp_path, ckpt, ["onnx", "openvino_fp32"])
    assert set(_statuses(manifest).values()) == {"passed"}, manifest


def test_report_puts_ours_beside_the_published_numbers(yolo_export, trained_run, tmp_path, monkeypatch):
    from evaluation.full_report import build_report
    from export.benchmark import benchmark_export

    _, out, _ = yolo_export
    _, run_dir, metrics = trained_run
    bcfg = compose_cfg(
        "export_benchmark", [f"export_dir={out}", "warmup=1", "min_runs=2", "min_seconds=0"], tmp_path
    )
    benchmark_export(out, bcfg)
    cfg = compose_cfg(
        "report", [f"out={tmp_path / 'report'}", f"test={run_dir}", f"latency={tmp_path / 'run'}"]
    )
    paths = build_report(cfg)
    md = paths["md"].read_text()
    # final test: ours, published (model card: mAP50 0.94499), difference in points, and where ours came from
    assert "| mAP50 | " + f"{metrics['test/mAP50']:.4f} | 0.9450 | " in md
    assert "signatures-xc8up-mini" in md and "best.pt" in md
    assert "| ONNX Runtime (CPU, fp32) |" in md and "171.56" in md
    # sections without a run say which command makes them
    assert "python -m evaluation.model_selection" in md and "python -m training.sweep" in md
    assert paths["html"].read_text().startswith("<!doctype html>") and "<table>" in paths["html"].read_text()
    assert paths["overview"].is_file()
    from training.cli import UserError

    with pytest.raises(UserError, match="tuning=.*not a finished tuning run"):
        build_report(compose_cfg("report", [f"out={tmp_path / 'r2'}", f"tuning={run_dir}"]))
    with pytest.raises(UserError, match="already holds a report"):
        build_report(cfg)
    # a published file from others is read as plain YAML: an interpolation never copies a secret into the report
    monkeypatch.setenv("SIGDET_PROBE_SECRET", "hunter2")
    pub = tmp_path / "pub.yaml"
    pub.write_text(
        "final_test:\n  source: ${oc.env:SIGDET_PROBE_SECRET} <script>alert(1)</script>\n  metrics: {mAP50: 0.9}\n"
    )
    paths = build_report(
        compose_cfg("report", [f"out={tmp_path / 'r3'}", f"test={run_dir}", f"published={pub}"])
    )
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "hunter2" not in md and "${oc.env:SIGDET_PROBE_SECRET}" in md
    assert "<script>" not in html and "&lt;script&gt;" in html  # its text, never its tags


@pytest.mark.slow  # 19 s: keeps the default suite under 10 minutes on 2 cores
def test_garbage_onnx_beside_a_valid_manifest_is_one_line_and_a_failed_latency_row(yolo_export, tmp_path):
    """A damaged model.onnx: the evaluator stops with one line naming it; the latency command still measures the
    other runtimes and gives the ONNX rows a reason instead of a traceback."""
    import shutil

    from export.benchmark import benchmark_export

    _, out, _ = yolo_export
    bad = tmp_path / "bad_export"
    shutil.copytree(out, bad)
    (bad / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            f"checkpoint={bad / 'model.onnx'}",
            f"hydra.run.dir={tmp_path / 'ev'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "model.onnx" in line and "not a loadable ONNX model" in line
    cfg = compose_cfg(
        "export_benchmark", [f"export_dir={bad}", "warmup=1", "min_runs=2", "min_seconds=0"], tmp_path
    )
    rows = {(r["runtime"], r["device"], r["precision"]): r for r in benchmark_export(bad, cfg)["rows"]}
    onnx_cpu = rows[("ONNX Runtime", "CPU", "fp32")]
    assert onnx_cpu["status"] == "failed" and "model.onnx" in onnx_cpu["reason"]
    assert rows[("OpenVINO", "CPU", "fp32")]["status"] == "ok"


@pytest.mark.parametrize(
    "change, why",
    [
        ({"cpu_choice": "model.onnx"}, "cpu_choice"),
        ({"cpu_choice": {"path": "model.bin"}}, "cpu_choice"),
        ({"cpu_choice": {"path": "../../elsewhere/model.onnx"}}, "cpu_choice"),
        ({"imgsz": "big"}, "imgsz"),
        ({"kind": ["ultralytics"]}, "kind"),
        ({"class_names": "signature"}, "class_names"),
        ({"artifacts": [1]}, "artifacts[0]"),
        ({"options": [1]}, "options"),
    ],
)
def test_malformed_manifest_is_one_line_naming_the_entry(yolo_export, tmp_path, change, why):
    """A manifest comes with an export folder from others: a wrong type in any entry is one line naming the
    manifest and the entry, for every reader (evaluation, predict, the latency command), never a traceback."""
    import shutil

    from training.inference.exported import META, load_exported

    _, out, _ = yolo_export
    bad = tmp_path / "bad_export"
    shutil.copytree(out, bad)
    meta = json.loads((bad / META).read_text())
    (bad / META).write_text(json.dumps({**meta, **change}))
    with pytest.raises(UserError) as e:
        load_exported(bad)
    assert str(bad / META) in str(e.value) and why in str(e.value) and "\n" not in str(e.value)
    if why == "imgsz":  # the same through a CLI: exit 2, one line
        r = run_module("evaluation", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'ev'}")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert str(bad / META) in r.stderr
