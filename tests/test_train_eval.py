"""Real (tiny) ultralytics training + evaluation round trips on the embedded data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, compose_cfg
from training.backends import build_detector
from training.cli import UserError


def test_run_dir_has_every_artefact(trained_run):
    cfg, run_dir, metrics = trained_run
    assert metrics["recipe/paste_crops"] > 0  # the quickstart's document recipe pastes training crops
    for name in (
        "config.yaml",
        "metrics.json",
        "metrics.md",
        "metrics.csv",
        "pr_curve_val.png",
        "f1_conf_val.png",
        "pr_curve_test.png",
        "f1_conf_test.png",
        "weights/best.pt",
        "weights/last.pt",
    ):
        assert (run_dir / name).is_file(), name
    doc = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for k in (
            "mAP50",
            "mAP50-95",
            "AP_small",
            "AP_medium",
            "AP_large",
            "precision",
            "recall",
            "f1",
            "conf_at_max_f1",
            "precision_at_conf",
            "f1_at_conf",
            "mAP50_ci_low",
            "mAP50_ci_high",
        ):
            assert f"{split}/{k}" in doc["metrics"], f"{split}/{k}"
    assert doc["metrics"]["train/epochs"] == 2
    assert doc["provenance"]["data"] == "signatures-xc8up-mini"
    md = (run_dir / "metrics.md").read_text()
    assert "| mAP50 |" in md and "95% CI" in md and "signatures-xc8up-mini" in md


def test_ultralytics_export_spec_is_what_predict_runs(trained_run, tmp_path):
    """The contract's export_spec: the traced module with the backend's own pre/post-processing gives the boxes
    predict() gives."""
    import numpy as np

    from training.inference.families import Family

    cfg, run_dir, _ = trained_run
    det = build_detector(cfg.model, tmp_path)
    det.load(run_dir / "weights" / "best.pt", device="cpu")
    fam = Family.from_spec(det.export_spec(64))
    assert (
        fam.kind == "ultralytics"
        and fam.input_names == ["images"]
        and fam.int8["ignored_types"] == ["Sigmoid"]
    )
    page = np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    feeds, ctx = fam.feeds(page)
    ours = fam.decode(fam.torch_outputs(feeds), ctx)
    theirs = det.predict([page], imgsz=64)[0]
    np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-3)
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)


def test_evaluation_cli_reproduces_training_numbers(trained_run, tmp_path):
    cfg, run_dir, metrics = trained_run
    out = tmp_path / "eval"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            f"checkpoint={run_dir / 'weights' / 'best.pt'}",
            "evaluation.splits=[val]",
            "evaluation.imgsz=64",
            "evaluation.n_bootstrap=20",
            "evaluation.ultralytics_metrics=true",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "metrics.json").read_text())["metrics"]
    assert doc["val/mAP50"] == pytest.approx(metrics["val/mAP50"], abs=1e-9)
    assert doc["val/f1"] == pytest.approx(metrics["val/f1"], abs=1e-9)
    assert "ultralytics/val/mAP50" in doc  # beside ours, never instead of
    assert (out / "pr_curve_val.png").is_file() and (out / "metrics.csv").is_file()


def test_finished_run_is_never_overwritten(trained_run):
    from training.train import train

    cfg, run_dir, _ = trained_run
    before = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(UserError, match="already holds a finished run"):
        train(cfg)
    assert (run_dir / "metrics.json").read_bytes() == before


def test_missing_checkpoint_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "evaluation", f"checkpoint={tmp_path}/nope.pt", f"hydra.run.dir={tmp_path}/e"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.pt" in r.stderr


def test_offline_weight_name_fails_with_instructions(tmp_path, monkeypatch):
    from training.backends.ultralytics import resolve_weights
    from training.cli import OfflineError

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="download yolov8s.pt"):
        resolve_weights("yolov8s.pt")
    with pytest.raises(UserError, match="not found"):
        resolve_weights(str(tmp_path / "dir" / "w.pt"))


@pytest.mark.slow
def test_resume_after_interrupted_run(tmp_path):
    """Kill a run after its first checkpoint, resume it, and finish all epochs."""
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "training",
        "experiment=quickstart",
        *[a for a in TINY if "epochs" not in a],
        "train.epochs=3",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    last = run_dir / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint written"
    time.sleep(0.5)  # let the save finish
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    r = subprocess.run([*args, "resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert doc["train/epochs"] == 3
    import csv

    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["epoch"])) for r in rows][-1] == 3


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose_cfg("train", ["experiment=quickstart", *TINY, "resume=true"], tmp_path)
    from training.train import train

    with pytest.raises(UserError, match="resume=true but"):
        train(cfg)


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    from evaluation.run import evaluate_run
    from training.train import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf-secret-123")
    cfg = compose_cfg("train", ["experiment=quickstart", *TINY, "logger=wandb"], tmp_path)
    train(cfg, evaluate=lambda d, c, r, t, p: evaluate_run(d, c, r, t, p))
    runs = list((Path(cfg.paths.run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = list(runs[0].rglob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    blob = b"".join(f.read_bytes() for f in runs[0].rglob("*") if f.is_file())
    assert b"rf-secret-123" not in blob
    assert b"val/mAP50" in blob  # final metrics reached the run


FOREIGN_WANDB_SCRIPT = r"""
import sys, wandb
from ultralytics.utils import SETTINGS
SETTINGS.update({"wandb": True})  # a user who enabled ultralytics' own W&B integration
calls = []
real_init = wandb.init
def spy(*a, **k):
    calls.append(k.get("project"))
    return real_init(*a, **k)
wandb.init = spy
# no pytest import here: ultralytics silences its W&B callback whenever pytest is loaded
import training
from ultralytics.utils.callbacks import wb
assert wb.wb is not None, "ultralytics W&B callback inactive: the test would prove nothing"
from hydra import compose, initialize_config_dir
from training.train import train
with initialize_config_dir(version_base="1.3", config_dir=sys.argv[2]):
    cfg = compose("train", overrides=["experiment=quickstart", *sys.argv[3:], "logger=wandb", "logger.project=ours",
                                      f"+paths.run_dir={sys.argv[1]}/run", f"data.cache_dir={sys.argv[1]}/cache"])
train(cfg)
print("INIT_CALLS", calls)
"""


def test_ultralytics_wandb_callback_is_kept_out(tmp_path):
    """Even with ultralytics' W&B integration switched on, only our run is opened."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "ultra_cfg")
    r = subprocess.run(
        [sys.executable, "-c", FOREIGN_WANDB_SCRIPT, str(tmp_path), str(ROOT / "conf"), *TINY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INIT_CALLS ['ours']" in r.stdout


def test_secrets_are_masked_but_ordinary_keys_are_not(monkeypatch):
    from training.tracking import redact

    monkeypatch.setenv("WANDB_API_KEY", "wb-123")
    out = redact(
        {
            "num_detection_tokens": 100,
            "hf_token": "x",
            "api_key": "y",
            "api_key_env": "ROBOFLOW_API_KEY",
            "nested": {"password": "p", "note": "wb-123", "max_tokens": 3},
        }
    )
    assert out["num_detection_tokens"] == 100 and out["nested"]["max_tokens"] == 3
    assert out["hf_token"] == out["api_key"] == out["nested"]["password"] == out["nested"]["note"] == "***"
    assert out["api_key_env"] == "ROBOFLOW_API_KEY"


def test_interrupted_run_is_not_overwritten_without_resume(tmp_path):
    from training.train import train

    cfg = compose_cfg("train", ["experiment=quickstart", *TINY], tmp_path)
    weights = Path(cfg.paths.run_dir) / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes(b"precious")
    with pytest.raises(UserError, match="resume=true"):
        train(cfg)
    assert (weights / "last.pt").read_bytes() == b"precious"
