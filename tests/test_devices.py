"""Latency on the device its column names, proved on a CPU machine by faking CUDA: the model-selection CPU column
loads on the CPU even when CUDA is available, a GPU column appears beside it, and CUDA timings synchronise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import compose_cfg
from tests.test_predict import PRETRAINED


def test_timed_closure_synchronises_on_cuda_only(monkeypatch):
    from training.backends.base import Backend

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))

    class FakeCudaTensor:
        is_cuda = True

    run = Backend._timed(lambda x: calls.append("forward"), FakeCudaTensor())
    run()
    assert calls == ["forward", "sync"] and run.device == "cuda"
    calls.clear()
    cpu = Backend._timed(lambda x: calls.append("forward"), torch.zeros(1))
    cpu()
    assert calls == ["forward"] and cpu.device == "cpu"


def test_cpu_column_is_timed_on_the_cpu_when_cuda_exists(monkeypatch, tmp_path):
    """The real ultralytics detector, CUDA faked available: loaded for the CPU column it runs on the CPU (the
    backend's own choice would be CUDA, which this machine lacks: any use of it would raise)."""
    from evaluation.latency import benchmark_detector
    from training.backends import get_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    det = get_backend("ultralytics").from_checkpoint(PRETRAINED, {"iou": 0.7, "max_det": 300}, device="cpu")
    page = np.full((96, 96, 3), 255, np.uint8)
    lat = benchmark_detector(det, page, 64, 0.25, warmup=1, min_runs=2, min_seconds=0.0)
    assert lat["model/runs"] >= 2 and lat["e2e/p50_ms"] > 0
    assert det.benchmark_forward(64).device == "cpu"


@pytest.mark.parametrize("cuda", [False, True])
def test_provenance_names_where_the_evaluation_ran(monkeypatch, cuda):
    """A metrics table says the device its numbers came from: the ultralytics detector reports where predict runs
    (CUDA when there is one; its ultralytics model object stays on the CPU), and a CUDA run names the GPU."""
    from omegaconf import OmegaConf

    from evaluation.run import provenance
    from training.backends import get_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    det = get_backend("ultralytics").from_checkpoint(PRETRAINED, {"iou": 0.7, "max_det": 300})
    assert det.device == ("cuda" if cuda else "cpu")
    cfg = OmegaConf.create({"data": {"name": "embedded"}, "model": {"name": "yolov8n"}})
    prov = provenance(cfg, det)
    assert prov["device"] == det.device
    assert prov["hardware"].endswith(" + NVIDIA H200") == cuda
    # loaded for the CPU on a CUDA machine, it says CPU
    cpu = get_backend("ultralytics").from_checkpoint(PRETRAINED, {"iou": 0.7, "max_det": 300}, device="cpu")
    assert provenance(cfg, cpu)["device"] == "cpu" and "H200" not in provenance(cfg, cpu)["hardware"]


@pytest.mark.parametrize("cuda", [False, True])
def test_model_selection_loads_each_column_on_its_device(monkeypatch, tmp_path, cuda):
    import evaluation.model_selection as ms

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    loads = []

    class FakeDetector:
        def __init__(self, device):
            self.device = device

        def num_parameters(self):
            return 1

    class FakeBackend:
        name = "ultralytics"

        @staticmethod
        def from_checkpoint(ckpt, decode, device=None, run_dir="."):
            loads.append(device)
            return FakeDetector(device)

    def fake_benchmark(detector, image, imgsz, conf, **protocol):
        return {"model/p50_ms": {"cpu": 10.0, "cuda": 1.0}[detector.device or "cuda"], "e2e/p50_ms": 20.0}

    def fake_evaluate(detector, split, ev):
        scored.append(detector.device)
        return type("R", (), {"metrics": {"mAP50": 0.5}})(), {}

    scored = []
    monkeypatch.setattr(ms, "get_backend", lambda name: FakeBackend)
    monkeypatch.setattr(ms, "benchmark_detector", fake_benchmark)
    monkeypatch.setattr(ms, "count_gflops", lambda detector, imgsz: None)
    monkeypatch.setattr("evaluation.evaluator.evaluate_detector", fake_evaluate)
    cfg = compose_cfg(
        "model_selection", ["preset=cpu_tiny", "data=embedded", "+checkpoints.yolov8n=x.pt"], tmp_path
    )
    res = ms.run_model(cfg, "yolov8n", tmp_path / "m", [], np.zeros((8, 8, 3), np.uint8), 0)
    row = ms.aggregate(
        [res], {"licence": {"code": "AGPL-3.0", "weights": "AGPL-3.0"}, "params_m": 3.2}, "val"
    )
    ms.rank_rows([row], "val", "mAP50")
    assert res["latency"]["model/p50_ms"] == 10.0  # the CPU column timed the CPU detector
    if cuda:
        assert loads == ["cpu", None, "cuda"] and scored == [None]  # scored where the backend chooses (CUDA)
        assert res["latency_gpu"]["model/p50_ms"] == 1.0
        rows = ms.selection_rows([row], "val")
        assert rows[0]["GPU ms (model, p50)"] == "1.00" and rows[0]["CPU ms (model, p50)"] == "10.0"
    else:
        assert loads == ["cpu"] and scored == ["cpu"] and "latency_gpu" not in res
        assert "GPU ms (model, p50)" not in ms.selection_rows([row], "val")[0]


def test_tensorrt_model_only_timing_has_no_host_device_copy():
    """The TensorRT runner's ``timed`` binds the page on the GPU once; each timed call only executes and waits
    (fake engine, context and torch: the counting is what matters here; the real runner runs in the gpu tests)."""
    from training.inference.runtimes import TensorRTRunner

    counts = {"copy": 0, "execute": 0, "sync": 0, "to_host": 0}

    class Tensor:
        shape = (1, 3, 8, 8)

        def cuda(self):
            counts["copy"] += 1
            return self

        def to(self, *_):
            return self

        def data_ptr(self):
            return 1

        def float(self):
            counts["to_host"] += 1
            return torch.zeros(1)

    class FakeTorch:
        float32 = torch.float32

        @staticmethod
        def from_numpy(a):
            return Tensor()

        @staticmethod
        def empty(shape, dtype, device):
            return Tensor()

    class Context:
        def set_input_shape(self, *a):
            pass

        def get_tensor_shape(self, n):
            return (1, 5)

        def set_tensor_address(self, *a):
            pass

        def execute_async_v3(self, stream):
            counts["execute"] += 1

    runner = object.__new__(TensorRTRunner)
    runner.torch, runner.context, runner.inputs, runner.outputs = (
        FakeTorch,
        Context(),
        ["images"],
        ["output0"],
    )
    runner.stream = type(
        "S",
        (),
        {"cuda_stream": 0, "synchronize": lambda self: counts.__setitem__("sync", counts["sync"] + 1)},
    )()
    runner._dtype = lambda name: torch.float32
    run = runner.timed({"images": np.zeros((1, 3, 8, 8), np.float32)})
    for _ in range(5):
        run()
    assert counts == {"copy": 1, "execute": 5, "sync": 5, "to_host": 0}
    runner({"images": np.zeros((1, 3, 8, 8), np.float32)})  # end to end: copies in and out
    assert counts["copy"] == 2 and counts["to_host"] == 1 and counts["execute"] == 6


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_training_runs_ultralytics_step_under_cpu_autocast(tmp_path, monkeypatch, native):
    """train.amp=bf16 on the CPU (ultralytics' own autocast() raises there): the training forward runs under
    torch's CPU BF16 autocast where the CPU has native BF16, in FP32 where it does not; validation stays FP32, the
    checkpoint keeps amp=bf16 (a resume trains the same way) and loads through the safe loader."""
    from ultralytics.engine import trainer as engine

    from tests.conftest import TINY
    from training.backends import build_detector
    from training.backends import ultralytics_training as ub

    monkeypatch.setattr(ub, "native_cpu_bf16", lambda: (native, "faked"))
    seen = []
    setup = engine.BaseTrainer._setup_train

    def spy(self, *a, **k):  # a forward hook on the training model only (the EMA copy validates)
        setup(self, *a, **k)
        self.model.register_forward_hook(
            lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        )

    monkeypatch.setattr(engine.BaseTrainer, "_setup_train", spy)
    over = ["experiment=quickstart", *TINY, "train.amp=bf16", "model.weights=null", "recipe=none"]
    cfg = compose_cfg("train", over, tmp_path)
    det = build_detector(cfg.model, tmp_path / "run", None)
    det.train(cfg)
    assert seen and set(seen) == ({torch.bfloat16} if native else {False})
    assert det.checkpoint.name == "best.pt"  # det.train loaded it back through the safe loader
    assert det.model.ckpt["train_args"]["amp"] == "bf16"


def test_bf16_plan_per_device(monkeypatch):
    from training.backends import ultralytics_training as ub

    monkeypatch.setattr(ub, "native_cpu_bf16", lambda: (True, "amx"))
    assert ub.bf16_plan("bf16", "cpu") == (False, True, "BF16 autocast")
    monkeypatch.setattr(ub, "native_cpu_bf16", lambda: (False, "no native BF16"))
    assert ub.bf16_plan("bf16", "cpu") == (False, False, "FP32 (no native BF16)")
    monkeypatch.setattr(ub, "native_cuda_bf16", lambda: False)  # a T4: ultralytics' autocast would raise
    assert ub.bf16_plan("bf16", "cuda") == (True, False, "FP16 AMP (this GPU has no native BF16)")
    monkeypatch.setattr(ub, "native_cuda_bf16", lambda: True)
    assert ub.bf16_plan("bf16", "cuda") == ("bf16", False, None)
    for amp in (True, False, "fp16", "fp32"):
        assert ub.bf16_plan(amp, "cpu") == (amp, False, None)
    assert ub.native_cuda_bf16() in (True, False)  # no CUDA here: False, no exception


def gpu_check(tmp_path, *flags: str, timeout: int) -> tuple:
    """``bash scripts/gpu_check.sh --out <tmp>/report FLAGS``: the report folder and its gpu_check.json."""
    import json
    import subprocess
    import sys

    from tests.conftest import OFFLINE_ENV, ROOT

    out = tmp_path / "report"
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--out", str(out), *flags],
        cwd=ROOT,
        env=OFFLINE_ENV | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_the_gpu_check_dry_run_writes_its_report(tmp_path):
    """scripts/gpu_check.sh on a CPU machine: every CUDA step reported as "no CUDA", the machine facts gathered, one
    Markdown report and its JSON in --out, nothing else there."""
    out, doc = gpu_check(tmp_path, "--dry-run", timeout=300)
    report = (out / "gpu_check.md").read_text()
    names = [s["name"] for s in doc["steps"]]
    assert names == [
        "yolo_amp",
        "eval_cpu_vs_cuda",
        "predict_parity",
        "detr_accelerate",
        "export_latency",
        "model_selection",
        "predict_cuda",
    ]
    assert {s["status"] for s in doc["steps"]} == {"no CUDA"} and "dry run" in report
    assert "| yolo_amp |" in report and "torch" in report and "ONNX Runtime providers" in report
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]


@pytest.mark.slow
def test_the_gpu_check_rehearsal_runs_every_step_on_the_cpu(tmp_path):
    """--rehearse: the same seven commands with the CPU in place of CUDA; every one passes, so that a lent GPU's
    minutes are not spent on a mistyped override (2 minutes on 2 cores)."""
    out, doc = gpu_check(tmp_path, "--rehearse", "--budget", "1200", timeout=1500)
    bad = {s["name"]: s["error"] for s in doc["steps"] if s["status"] != "passed"}
    assert not bad, bad
    assert doc["rehearsal"] and "CPU rehearsal" in (out / "gpu_check.md").read_text()
    assert {"latency.md", "model_selection.md"} <= {p.name for p in out.iterdir()}
