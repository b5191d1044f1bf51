"""The transformers backend on ``accelerate``: one process in-process, and DDP on the CPU with the gloo backend
launched the standard way (``torchrun --nproc_per_node 2 -m training ...``): same checkpoint format, same loss
curve as one process with the same global batch, and the tracker and metrics.json written once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from evaluation.run import evaluate_run, validator
from tests.conftest import EMBEDDED, HF_TINY, ROOT, compose_cfg, decode_table
from training.backends import build_detector, get_backend
from training.cli import ConfigError
from training.train import train

# identical data on both sides: no augmentation and no dropout (each rank draws its own random numbers)
SAME_DATA = [
    "train.augment.rotate_deg=0",
    "train.augment.scale=null",
    "train.augment.brightness=0",
    "train.augment.contrast=0",
    "train.augment.blur=0",
    "+model.config.dropout=0.0",
]
# HF_TINY without its batch and step count (set per run below), plus the per-step loss lines of training.loops
DDP_TINY = [
    "model=debug/detr",
    *(o for o in HF_TINY if not o.startswith(("train.batch=", "train.max_steps="))),
    *SAME_DATA,
    "train.max_steps=7",
    "train.seed=0",
    "hydra.verbose=training.loops",
]
STEP = re.compile(r"\bstep (\d+) loss ([0-9.eE+-]+)")


def _run(
    launcher: list[str], run_dir: Path, *overrides: str
) -> tuple[subprocess.CompletedProcess, list[float]]:
    env = {
        **os.environ,
        "CI": "true",  # no progress bars
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",  # what torchrun sets for 2 processes: both runs compute alike
    }
    r = subprocess.run(
        [*launcher, "-m", "training", *DDP_TINY, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    steps = [(int(n), float(v)) for n, v in STEP.findall(r.stdout + r.stderr)]
    return r, [v for _, v in steps] if [n for n, _ in steps] == list(range(1, len(steps) + 1)) else []


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_one_process_through_accelerate(tmp_path):
    """The in-process path (an Accelerator with one process): trains, validates, writes best and last as before;
    gradient accumulation counts optimizer steps; bf16 runs on the CPU."""
    cfg = compose_cfg(
        "train",
        ["model=debug/detr", *HF_TINY, "train.grad_accum=2", "train.precision=bf16"],
        tmp_path,
    )
    metrics = train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    run = Path(cfg.paths.run_dir)
    # max_steps counts optimizer steps: 2 steps of 2 accumulated batches each
    assert metrics["train/steps"] == 2 and metrics["train/processes"] == 1
    assert metrics["train/images_per_s"] > 0 and "test/mAP50" in metrics
    assert (run / "weights" / "last" / "trainer_state.pt").is_file()
    assert {"config.json", "model.safetensors", "sigdet.json"} <= set(_files(run / "weights" / "best"))
    assert (run / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=fp32", "train.precision='fp32': valid values are null, no, fp16, bf16"),
        ("train.precision=fp16", "train.precision=fp16 needs a GPU"),
        ("train.grad_accum=0", "train.grad_accum=0"),
    ],
)
def test_bad_accelerate_settings_are_one_line(tmp_path, override, message):
    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY, "train.device=cpu", override], tmp_path)
    det = build_detector(cfg.model, Path(cfg.paths.run_dir))
    with pytest.raises(ConfigError) as e:
        det.train(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_precision_no_in_yaml_reads_as_no(tmp_path):
    """A bare ``precision: no`` in a YAML file is the boolean false to YAML 1.1: still "no"."""
    from training.backends.transformers_training import precision_of

    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY], tmp_path)
    with open_dict(cfg):
        cfg.train.precision = False
    assert precision_of(cfg.train, torch.device("cpu")) == "no"
    cfg.train.precision = None
    assert precision_of(cfg.train, torch.device("cpu")) == "no"  # train.amp=true: fp16 on CUDA only
    assert precision_of(cfg.train, torch.device("cuda")) == "fp16"


@pytest.mark.slow  # two training processes and a one-process run: ~45 s on 2 cores
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_gloo_processes_match_one(tmp_path):
    """``torchrun --nproc_per_node 2`` on the CPU (gloo), batch 1 per process, against one process with batch 2.

    Every global batch holds the same images (the shuffling generator is synchronised from rank 0 and rank r takes
    the r-th batch of it), DETR's box losses divide by the box count of the global batch (summed over the ranks) and
    DDP averages the gradients. The loss then equals the one-process loss wherever both images of a global batch
    hold as many boxes; with unequal counts the class loss, a weighted mean on each rank (no-object queries weigh
    0.1), comes out a little different (up to 1% in a 20-step run). With this data and seed 0, steps 1-6 hold one
    box per image and step 7 holds 1 and 3. Measured (both runs on one thread): steps 1-6 equal to 2e-7 relative,
    step 7 to 3e-3, weights after step 7 to 1e-5. What the tolerances catch: gradients not synchronised (step 2
    already 7e-5 off, weights 8e-4 apart), the box count averaged twice (transformers' own reduce: step 7 nearly
    2x), other data (another loss)."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one, one_losses = _run([sys.executable], one_dir, "train.batch=2")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    # a free rendezvous port each time (tests may run in parallel on one machine)
    torchrun += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]
    two, two_losses = _run(torchrun, two_dir, "train.batch=1", "logger=wandb")
    assert two.returncode == 0, two.stderr[-3000:]

    assert len(one_losses) == 7 and len(two_losses) == 7, (one.stderr[-2000:], two.stderr[-2000:])
    np.testing.assert_allclose(two_losses[:6], one_losses[:6], rtol=1e-5)
    np.testing.assert_allclose(two_losses[6], one_losses[6], rtol=1e-2)
    weights = [load_file(d / "weights" / "last" / "model.safetensors") for d in (one_dir, two_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-4

    # the same files in the same format, written once by the main process
    for sub in ("weights/best", "weights/last"):
        assert _files(two_dir / sub) == _files(one_dir / sub), sub
    a = torch.load(one_dir / "weights/last/trainer_state.pt", weights_only=False)
    b = torch.load(two_dir / "weights/last/trainer_state.pt", weights_only=False)
    assert sorted(a) == sorted(b) and a["fit"] == b["fit"] == {**a["fit"], "epoch": 1, "steps": 7}
    assert a["optimizer"]["param_groups"][0].keys() == b["optimizer"]["param_groups"][0].keys()
    metrics = json.loads((two_dir / "metrics.json").read_text())["metrics"]
    assert metrics["train/processes"] == 2 and metrics["train/steps"] == 7
    assert len(list((two_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, the main process's
    assert (two.stdout + two.stderr).count(f"wrote {two_dir / 'metrics.md'}") == 1  # one evaluation
    assert (two.stdout + two.stderr).count("train epoch 1/1 ") == 1  # one epoch line, the main process's

    # the checkpoint loads as any other and predicts
    backend = get_backend("transformers")
    det = backend.from_checkpoint(two_dir / "weights" / "best", decode_table()["transformers"], device="cpu")
    images = sorted(p for p in (EMBEDDED / "valid").iterdir() if p.suffix == ".jpg")[:2]
    out = det.predict(images, conf=0.0)
    assert len(out) == 2 and all(len(d) > 0 for d in out)


def test_backends_without_a_distributed_loop_refuse_a_launcher(tmp_path, monkeypatch):
    """Under torchrun every rank would train alone and write the same run dir: one clear line instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = compose_cfg("train", ["experiment=quickstart", "train.epochs=1"], tmp_path)
    with pytest.raises(ConfigError, match="only the transformers backend trains with torchrun") as e:
        train(cfg)
    assert "\n" not in str(e.value)
