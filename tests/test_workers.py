"""Several workers on one job: worker numbers, GPU pinning, claims, and model selection split over workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import compose_cfg
from training.workers import claim, pin_device, release, worker_index


def test_worker_index_reads_ours_then_slurms(monkeypatch):
    for var in ("SIGDET_WORKER", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert worker_index() == 0
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert worker_index() == 5
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert worker_index() == 3
    monkeypatch.setenv("SIGDET_WORKER", "1")
    assert worker_index() == 1


def test_pin_device_round_robin(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_device(None, 3) is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert pin_device([0, 1], 3) == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert pin_device(["2", "3"], 4) == "2" and os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_claims(tmp_path):
    work = tmp_path / "model"
    assert claim(work) and claim(work)  # ours, twice
    release(work)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work / "claim.json").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        assert not claim(work)  # a live worker on this host holds it
    finally:
        other.kill()
        other.wait()
    assert claim(work)  # its worker died: taken over
    (work / "claim.json").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert not claim(work)  # another machine's claim is trusted
    for odd in ([1, 2], {"host": socket.gethostname(), "pid": "abc"}, "text"):
        (work / "claim.json").write_text(json.dumps(odd))
        assert not claim(work)  # not a worker's: trusted like a torn one, never a traceback
    release(work)
    assert claim(work)


def test_model_selection_workers_share_the_models(monkeypatch, tmp_path):
    """Worker 1 finds model b claimed by a live worker: it does a, writes the partial table and leaves b; once b's
    result is there, a re-run writes the full table without redoing anything."""
    import evaluation.model_selection as ms

    done = []

    def fake_run_model(cfg, name, out_dir, data_overrides, page, seed):
        if (out_dir / "result.json").is_file():  # like run_model: a finished model is not redone
            return json.loads((out_dir / "result.json").read_text())
        done.append(name)
        result = {
            "model": name,
            "seed": seed,
            "backend": "ultralytics",
            "checkpoint": "x.pt",
            "params": 1,
            "gflops": None,
            "metrics": {"val/mAP50": 0.5, "val/mAP50-95": 0.3},
            "latency": {"model/p50_ms": 10.0, "e2e/p50_ms": 12.0, "threads": 2.0},
        }
        (out_dir / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(ms, "run_model", fake_run_model)
    monkeypatch.setattr(ms, "_data_overrides", lambda: ["data=embedded"])
    monkeypatch.setattr(
        ms, "model_meta", lambda name: {"licence": {"code": "MIT", "weights": "none"}, "params_m": None}
    )
    monkeypatch.setenv("SIGDET_WORKER", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = compose_cfg("model_selection", ["data=embedded", "models=[a,b]", "devices=[0,1]"], tmp_path)
    out = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "models" / "b" / "seed_0").mkdir(parents=True)
        (out / "models" / "b" / "seed_0" / "claim.json").write_text(
            json.dumps({"host": socket.gethostname(), "pid": other.pid})
        )
        ms.model_selection(cfg)
    finally:
        other.kill()
        other.wait()
    assert done == ["a"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    doc = json.loads((out / "model_selection.json").read_text())
    assert [r["model"] for r in doc["results"]] == ["a"]
    assert not (out / "models" / "a" / "seed_0" / "claim.json").exists()  # released

    fake_run_model(cfg, "b", out / "models" / "b" / "seed_0", [], None, 0)  # the other worker finishes b
    (out / "models" / "b" / "seed_0" / "claim.json").unlink()
    done.clear()
    ms.model_selection(cfg)
    assert done == []
    doc = json.loads((out / "model_selection.json").read_text())
    assert [r["model"] for r in doc["results"]] == ["a", "b"]
