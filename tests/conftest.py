"""Fixtures compose the real configs (conf/) with tiny overrides and tmp_path output dirs."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

import training  # noqa: F401  (registers resolvers)
from training.cli import CONF  # the one home of the config folder
from training.data import asset_path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {**os.environ, "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root, offline, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=OFFLINE_ENV,
    )


EMBEDDED = Path(asset_path("signatures-xc8up-mini"))

# Tiny, CPU-friendly settings shared by the tests that really train.
TINY_EVAL = ["evaluation.n_bootstrap=20", "evaluation.ultralytics_metrics=false", "evaluation.n_log_images=2"]
TINY = [
    "train.epochs=1",
    "train.imgsz=64",
    "train.batch=4",
    "train.workers=0",
    "train.plots=false",
    "train.amp=false",
    "train.warmup_epochs=0",
    *TINY_EVAL,
]
# transformers backend: a couple of optimizer steps of a debug model (use without experiment=quickstart,
# whose train block holds ultralytics arguments)
HF_TINY = [
    "trainer@train=transformers",
    "train.epochs=1",
    "train.max_steps=2",
    "train.imgsz=64",
    "train.batch=2",
    "train.workers=0",
    *TINY_EVAL,
]

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(__import__("tempfile").mkdtemp(prefix="sigdet-ultra-"))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


FORMAT_OPTIONS = {
    "coco": "coco_folder",
    "yolo": "yolo_folder",
    "hf": "hf_signature_detection",
    "roboflow": "roboflow",
    "synthetic": "synthetic",
}


def data_node(values: dict | None = None, /, **more) -> DictConfig:
    """The ``data:`` node Hydra composes for ``values["format"]`` (its conf/data option: schema and every value),
    with ``values`` merged over it: tests describe only what differs, like a user's override."""
    values = {**(values or {}), **more}
    return OmegaConf.merge(_data_option(FORMAT_OPTIONS[values["format"]]), values)


def decode_table() -> dict:
    """conf/decode/default.yaml: backend -> NMS IoU and max detections, as every entry point reads it."""
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "decode" / "default.yaml"))


@functools.cache
def _data_option(option: str) -> DictConfig:
    """Composed once per option (hypothesis tests build hundreds of data configs); merge() copies it."""
    return compose_cfg("train", [f"data={option}"]).data


def compose_cfg(
    config_name: str = "train", overrides: list[str] | None = None, tmp_path: Path | None = None
) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=overrides or [])
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "outputs")
            cfg.paths.run_dir = str(tmp_path / "run")
            if "data" in cfg:
                cfg.data.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def make(overrides: list[str] | None = None, config_name: str = "train", sub: str = "") -> DictConfig:
        base = tmp_path / sub if sub else tmp_path
        return compose_cfg(config_name, overrides, base)

    return make


@pytest.fixture
def embedded_copy(tmp_path) -> Path:
    """A writable copy of the embedded dataset (COCO layout) for tests that corrupt it."""
    dst = tmp_path / "data"
    shutil.copytree(EMBEDDED, dst)
    return dst


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny real training + evaluation on the embedded data, shared by the round-trip tests."""
    from evaluation.run import evaluate_run
    from training.train import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg("train", ["experiment=quickstart", *TINY, "train.epochs=2"], tmp)
    metrics = train(cfg, evaluate=lambda d, c, r, t, p: evaluate_run(d, c, r, t, p))
    return cfg, Path(cfg.paths.run_dir), metrics


# small parity / calibration sets and a handful of timing runs for the CPU-path choice: the point is the round trip
EXPORT_TINY = [
    "calibration.n_images=4",
    "parity.n_images=4",
    "evaluation.n_bootstrap=0",
    "select.warmup=1",
    "select.runs=3",
]
# a tiny crop pool for the region classifier's parity and calibration
CROPS_TINY = [
    "crops.detection.enabled=false",
    "crops.synthetic.pages.train=3",
    "crops.synthetic.pages.val=3",
    "crops.synthetic.pages.test=0",
]
# the latency protocol cut to a smoke test
BENCH_TINY = ["warmup=1", "min_runs=2", "min_seconds=0"]


def export_tiny(tmp_path, checkpoint, formats, extra=(), sub="export"):
    """``python -m export`` of ``checkpoint`` to ``formats`` with :data:`EXPORT_TINY`: (cfg, folder, manifest)."""
    from export.run import export_checkpoint

    cfg = compose_cfg(
        "export",
        [f"checkpoint={checkpoint}", f"formats=[{','.join(formats)}]", *EXPORT_TINY, *extra],
        tmp_path,
    )
    out = tmp_path / sub
    return cfg, out, export_checkpoint(cfg, out)
