"""ultralytics' multi-GPU path (``train.device=0,1``) on a CPU machine: its launcher pickles the trainer class,
the model and the callbacks into a file that each DDP worker loads in a fresh process. This test stands in for
``torch.distributed.run`` only: it writes that file with ultralytics' own ``generate_ddp_file`` from the trainer our
backend built, runs it in a fresh Python (as a worker does, on the CPU), then lets our backend finish as the
launching process of a real DDP run does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TINY, compose_cfg

# a DDP worker, with a spy on the copy-paste loader (pasting must happen in the workers, not only in the launcher)
WORKER = """
import runpy, sys
from training.augment import copy_paste
init = copy_paste.PastingLoader.__init__
def spy(self, *a, **k):
    print("SIGDET-PASTE installed", flush=True)
    init(self, *a, **k)
copy_paste.PastingLoader.__init__ = spy
runpy.run_path(sys.argv[1], run_name="__main__")
"""


class RecordingTracker:
    """Records the logged metrics; like a W&B run (threads, sockets), it cannot be pickled into a worker."""

    def __init__(self):
        self.logged = []

    def __reduce__(self):
        raise TypeError("a tracker run cannot be pickled")

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def test_ddp_workers_rebuild_our_trainer_callbacks_and_copy_paste(tmp_path, monkeypatch):
    from ultralytics.engine import trainer as engine
    from ultralytics.utils.dist import generate_ddp_file

    from training.backends import build_detector

    seen = {}

    def launch(
        self,
    ):  # BaseTrainer.train of the launching process, torch.distributed.run replaced by one worker
        file = Path(generate_ddp_file(self))
        try:
            state = file.with_suffix(".pt").read_bytes()
            # the trainer class travels by name (a module-level class), not as pickled code
            seen["by_name"] = b"training.backends.ultralytics" in state and b"SigdetDetectionTrainer" in state
            seen["worker"] = subprocess.run(
                [sys.executable, "-c", WORKER, str(file)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "CI": "true"},
            )
        finally:
            file.unlink(missing_ok=True)
            file.with_suffix(".pt").unlink(missing_ok=True)
        self.ddp = True  # what a real multi-GPU launcher is; our backend then reads the workers' results

    monkeypatch.setattr(engine.BaseTrainer, "train", launch)
    over = [
        "experiment=quickstart",
        *TINY,
        "recipe=document",
        "recipe.copy_paste.p=1.0",
        "model.weights=null",
    ]
    cfg = compose_cfg("train", over, tmp_path)
    tracker = RecordingTracker()
    det = build_detector(cfg.model, Path(cfg.paths.run_dir), tracker)
    metrics = det.train(cfg)

    worker = seen["worker"]
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert seen["by_name"]
    assert "SIGDET-PASTE installed" in worker.stdout
    assert metrics["train/epochs"] == 1 and metrics["recipe/paste_crops"] > 0
    assert det.checkpoint.name == "best.pt" and det.checkpoint.is_file()
    # the workers' epochs reached the tracker of the launching process (from results.csv), once each
    steps = [step for step, _ in tracker.logged]
    assert steps == [1]
    logs = tracker.logged[0][1]
    assert {"ultralytics/mAP50", "ultralytics/train/box_loss", "ultralytics/lr/pg0", "epoch"} <= set(logs)
