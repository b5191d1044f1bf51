"""Model cards for every kind of run, and `python -m evaluation.publish`: the card, a transformers folder's image
processor config, the hub upload (against a local stand-in of HfApi) and the W&B model artifact (offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import HF_TINY, ROOT, compose_cfg
from training.cli import UserError

SECRET = "s3cr3t-Tok"
ENV = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HF_TOKEN")} | {
    "HF_HUB_OFFLINE": "1",
    "WANDB_SILENT": "true",
    "CI": "true",
}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> Path:
    """A real `python -m training` run of the debug DETR (2 steps, evaluated): .hydra/ files, config.yaml,
    metrics.json and the weights/best run folder as a user gets them."""
    run = tmp_path_factory.mktemp("hf") / "run"
    r = cli("training", "model=debug/detr", *HF_TINY, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    return run


@pytest.fixture
def run_copy(hf_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(hf_run, dst)
    return dst


def fake_run(tmp_path: Path, backend: str, metrics: dict, provenance: dict, **extra) -> Path:
    """A run folder of an ultralytics or classifier run, as its training writes it (no training here)."""
    run = tmp_path / backend
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"weights")
    doc = {"metrics": metrics, "provenance": provenance, **extra}
    (run / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")
    return run


def _card(text: str) -> tuple[dict, str]:
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_training_writes_the_processor_and_publish_the_card(run_copy):
    from evaluation.publish import publish

    best = run_copy / "weights" / "best"
    written = json.loads((best / "preprocessor_config.json").read_text())  # training wrote it
    (best / "preprocessor_config.json").unlink()  # as in a run folder saved before the interop
    done = publish(compose_cfg("publish", [f"run_dir={run_copy}"]))
    assert done["processor"] == best / "preprocessor_config.json" and done["hub"] is done["artifact"] is None
    assert json.loads(done["processor"].read_text()) == written
    assert written["image_processor_type"] == "DetrImageProcessor" and written["size"] == {
        "max_height": 64,
        "max_width": 64,
    }
    meta, body = _card((run_copy / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "object-detection"
    assert {"detr", "debug-detr", "signature-detection"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["val", "test"]
    metrics = json.loads((run_copy / "metrics.json").read_text())["metrics"]
    assert results[1]["metrics"][0] == {
        "type": "mAP50",
        "value": round(metrics["test/mAP50"], 4),
        "name": "mAP@0.5 (COCO, pycocotools)",
    }
    lo, hi = metrics["test/mAP50_ci_low"], metrics["test/mAP50_ci_high"]
    assert f"[{lo:.4f}, {hi:.4f}]" in body and "95% intervals: 20 bootstrap resamples" in body
    assert "CC BY 4.0" in body and "signatures-xc8up-mini" in body
    assert "- Device: cpu" in body and "- torch: " in body and "- Hardware: " in body
    assert "python -m training model=debug/detr trainer@train=transformers train.epochs=1" in body
    assert 'pipeline("object-detection", model="<this folder>")' in body


def test_hub_upload_through_a_local_stand_in(run_copy, tmp_path, monkeypatch):
    """What would reach the hub: the run folder's model files at the repo root (a loadable model folder), the
    card, metrics.json and a re-masked config.yaml; never the resume state or .hydra/, never a secret."""
    import huggingface_hub
    from transformers import pipeline

    from evaluation.publish import publish

    hub_root, calls = tmp_path / "hub", []

    class StandIn:
        def __init__(self, *args, **kwargs):
            calls.append(("init", args, kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, kwargs))
            shutil.copytree(folder_path, hub_root / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "HfApi", StandIn)
    # a secret a user left in the run's config (masked in config.yaml by training; re-masked on the way out too)
    cfg_file = run_copy / "config.yaml"
    cfg_file.write_text(cfg_file.read_text() + f"hub_token: {SECRET}\n")
    (run_copy / "weights" / "best" / "trainer_state.pt").write_bytes(b"optimizer state")
    done = publish(
        compose_cfg("publish", [f"run_dir={run_copy}", "hub.repo_id=me/sigdet-detr", "hub.private=true"])
    )
    assert done["hub"] == "https://huggingface.co/me/sigdet-detr"
    assert [c[0] for c in calls] == ["init", "create_repo", "upload_folder"]
    assert calls[1][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert calls[2][2]["repo_type"] == "model" and "debug-detr" in calls[2][2]["commit_message"]
    repo = hub_root / "me" / "sigdet-detr"
    assert sorted(p.name for p in repo.iterdir()) == [
        "README.md",
        "config.json",
        "config.yaml",
        "metrics.json",
        "model.safetensors",
        "preprocessor_config.json",
        "sigdet.json",
    ]
    assert not [p for p in repo.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert yaml.safe_load((repo / "config.yaml").read_text())["hub_token"] == "***"
    assert 'model="me/sigdet-detr"' in (repo / "README.md").read_text()
    # a few-step model: scores are low, so no threshold (the point is that the uploaded folder loads and labels)
    found = pipeline("object-detection", model=str(repo))(
        str(next((ROOT / "training/assets").rglob("*.jpg"))), threshold=0.0
    )
    assert found and found[0]["label"] == "signature"


def test_wandb_model_artifact_offline(run_copy, tmp_path, monkeypatch):
    from evaluation.publish import publish

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    done = publish(compose_cfg("publish", [f"run_dir={run_copy}", "wandb_artifact=true"]))
    assert done["artifact"] == "debug-detr-run" and done["hub"] is None
    (offline,) = (run_copy / "wandb").glob("offline-run-*")
    blob = b"".join(f.read_bytes() for f in offline.rglob("*.wandb"))
    for key in (b"debug-detr-run", b"model.safetensors", b"preprocessor_config.json", b"README.md", b"best"):
        assert key in blob, key
    assert b"trainer_state.pt" not in blob


def test_wandb_artifact_needs_a_wandb_logger(run_copy):
    from evaluation.publish import publish

    cfg = compose_cfg("publish", [f"run_dir={run_copy}", "wandb_artifact=true", "logger=none"])
    with pytest.raises(UserError, match="logger=wandb"):
        publish(cfg)


def test_card_of_an_ultralytics_run(tmp_path):
    from evaluation.model_card import write_model_card

    metrics = {"test/mAP50": 0.91, "test/mAP50_ci_low": 0.88, "test/mAP50_ci_high": 0.93, "test/f1": None}
    metrics |= {"test/n_images": 419, "test/n_boxes": 500, "train/epochs": 100, "train/time_s": 3600.0}
    run = fake_run(
        tmp_path,
        "ultralytics",
        metrics,
        {"data": "tech4humans-signature-detection", "hardware": "x86_64", "device": "cuda:0", "torch": "2.5"},
    )
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "task_name": "yolov8s",
                "model": {"backend": "ultralytics", "name": "yolov8s", "arch": "yolov8s.yaml"},
                "data": {
                    "name": "tech4humans-signature-detection",
                    "format": "hf",
                    "path": "tech4humans/signature-detection",
                },
            }
        )
    )
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["experiment=upstream", "model=yolov8s", "data=hf_signature_detection"])
    )
    meta, body = _card(write_model_card(run).read_text())
    assert meta["library_name"] == "ultralytics" and meta["datasets"] == ["tech4humans/signature-detection"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"] == {
        "name": "tech4humans-signature-detection",
        "type": "tech4humans/signature-detection",
        "split": "test",
    }
    assert [m["type"] for m in result["metrics"]] == ["mAP50"]  # a missing (NaN) metric is left out
    assert "| 0.9100 | [0.8800, 0.9300] |" in body and "test 419 images, 500 boxes" in body
    assert "python -m training experiment=upstream model=yolov8s data=hf_signature_detection" in body
    assert "huggingface.co/datasets/tech4humans/signature-detection" in body  # the licence: its card
    assert "- Device: cuda:0" in body and "100 epochs" in body and "60.0 min" in body
    assert 'YOLO("best.pt")' in body


def test_card_of_a_classifier_run_without_hydra_files(tmp_path):
    from evaluation.model_card import write_model_card

    metrics = {"test/accuracy": 0.95, "test/accuracy_ci_low": 0.9, "test/accuracy_ci_high": 0.98}
    metrics |= {"test/macro_f1": 0.9, "base/test/accuracy": 0.8}
    prov = {"data": "crops: synthetic pages", "weights": "imagenet", "hardware": "x86_64", "torch": "2.5"}
    run = fake_run(tmp_path, "classifier", metrics, prov, classes=["signature", "stamp", "thumb"])
    meta, body = _card(write_model_card(run).read_text())
    assert meta["pipeline_tag"] == "image-classification"
    assert [r["dataset"]["split"] for r in meta["model-index"][0]["results"]] == ["test"]
    assert "| accuracy | 0.9500 | [0.9000, 0.9800] |" in body and "| macro F1 | 0.9000 |  |" in body
    assert "Initial weights: imagenet" in body and "kept no `.hydra/overrides.yaml`" in body
    assert "unknown: check the data's terms" in body


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "not found"),
        ("{not json", "malformed"),
        ('{"provenance": {}}', "malformed"),
        ("[1, 2]", "malformed"),
    ],
)
def test_missing_or_malformed_metrics_json_is_one_line_naming_it(tmp_path, content, why):
    from evaluation.model_card import write_model_card

    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(UserError) as e:
        write_model_card(tmp_path)
    assert str(tmp_path / "metrics.json") in str(e.value) and why in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    for args, text in (
        ([], "run_dir= is required"),
        ([f"run_dir={tmp_path / 'nope'}"], "not a directory"),
        ([f"run_dir={tmp_path}"], f"{tmp_path / 'metrics.json'}: malformed"),
    ):
        r = cli("evaluation.publish", *args)
        assert r.returncode == 2 and text in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_publish_uploads_only_a_model_of_the_run(tmp_path):
    """What publish uploads is public by default: a metrics.json naming any file as its checkpoint, or a link in
    the run folder, never gets a file from elsewhere uploaded."""
    import torch

    from evaluation.model_card import CARD, read_run
    from evaluation.publish import publish_files

    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    run = fake_run(tmp_path, "ultralytics", {"test/mAP50": 0.9}, {"checkpoint": str(secret)})
    best = run / "weights" / "best.pt"
    best.unlink()  # an evaluation run: its weights are the checkpoint its provenance names
    with pytest.raises(UserError, match="not a model"):
        publish_files(read_run(run))
    best.symlink_to(secret)
    with pytest.raises(UserError, match="symbolic link"):
        publish_files(read_run(run))
    best.unlink()
    torch.save({"w": torch.zeros(1)}, best)
    (run / CARD).symlink_to(secret)
    assert publish_files(read_run(run)) == {"best.pt": best, "metrics.json": run / "metrics.json"}


@pytest.mark.parametrize("how", ["no route", "HF_HUB_OFFLINE"])
def test_an_unreachable_hub_stages_the_upload_for_later(run_copy, monkeypatch, capsys, how):
    """No route to the hub (a loopback port nothing listens on: no traffic leaves the machine) or offline mode:
    publish keeps the files it would upload in <run>/hub_upload and says how to upload them later, in one line
    (was an httpx ConnectError traceback); the card is still written (issue 40)."""
    from evaluation.publish import publish

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    if how == "no route":
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:1")
    else:
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    done = publish(compose_cfg("publish", [f"run_dir={run_copy}", "hub.repo_id=me/sigdet-detr"]))
    assert done["hub"] is None and done["card"].is_file()
    staged = run_copy / "hub_upload"
    assert (staged / "README.md").is_file() and (staged / "metrics.json").is_file()
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "hub unreachable" in x]
    assert f"hf upload me/sigdet-detr {staged}" in line
