"""The model-selection command with tiny settings: trains, evaluates, times, writes the table; resumable."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(tmp_path, *extra):
    cmd = [
        sys.executable,
        "-m",
        "evaluation.model_selection",
        "preset=cpu_tiny",
        "data=embedded",
        f"paths.output_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tiny_model_selection_end_to_end_and_resumable(tmp_path):
    r = run(tmp_path, "models=[yolov8n,debug/detr]")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "model_selection" / "cpu_tiny"
    for f in ("model_selection.md", "model_selection.csv", "model_selection.json", "model_selection.png"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "model_selection.json").read_text())
    assert [x["model"] for x in doc["results"]] == ["yolov8n", "debug/detr"]
    for res in doc["results"]:
        assert res["params"] > 0
        assert res["latency"]["model/runs"] >= 5 and res["latency"]["e2e/p50_ms"] > 0
        assert "val/mAP50" in res["metrics"] and "val/mAP50_ci_low" in res["metrics"]
    assert doc["environment"]["cpu"] and doc["environment"]["version/torch"]
    assert set(doc["highlights"]) == {"best mAP50", "best mAP50-95", "fastest (CPU, model p50 ms)"}
    md = (out / "model_selection.md").read_text()
    assert "| yolov8n |" in md and "CPU ms (model, p50)" in md and "signatures-xc8up-mini" in md

    # resumable: a model already done is not redone; a new one is added (here: evaluate-only from a checkpoint)
    stamp = (out / "models" / "yolov8n" / "result.json").stat().st_mtime_ns
    ckpt = doc["results"][0]["checkpoint"]
    r = run(tmp_path, "models=[yolov8n,debug/detr,yolov8s]", f"+checkpoints.yolov8s={ckpt}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "models" / "yolov8n" / "result.json").stat().st_mtime_ns == stamp
    assert "done already" in r.stdout + r.stderr
    doc2 = json.loads((out / "model_selection.json").read_text())
    assert [x["model"] for x in doc2["results"]] == ["yolov8n", "debug/detr", "yolov8s"]
    assert not (out / "models" / "yolov8s" / "run").exists()  # evaluated, not trained


def test_unknown_model_is_one_line(tmp_path):
    r = run(tmp_path, "models=[nope]")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
