"""Seconds per training step and per-image CPU inference of the four transformers models at 640.

    python benchmarks/hf_models.py --batch 2 --steps 3 --runs 10

Full-size architectures with random init (as built offline from conf/model/*.yaml), the embedded pages resized
and padded to 640. Training: ``--steps`` timed optimizer steps after one warm-up step. Inference: the latency
protocol's measure() with ``--warmup`` / ``--runs`` (defaults shortened from 10 / 100 because one DETR forward
takes seconds on a small CPU: say so when quoting).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["detr-resnet-50", "conditional-detr-resnet-50", "yolos-tiny", "yolos-base"]


def main() -> None:
    ap = argparse.ArgumentParser()
    for flag, default in {"--batch": 2, "--steps": 3, "--warmup": 2, "--runs": 10, "--imgsz": 640}.items():
        ap.add_argument(flag, type=int, default=default)
    a = ap.parse_args()

    import training  # noqa: F401
    from evaluation.latency import environment, measure
    from training.backends import build_detector
    from training.backends.transformers_training import TransformersTrainer, _collate, _DetectionDataset
    from training.data import load_dataset
    from training.data.images import load_rgb

    rows = []
    for name in MODELS:
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("train", overrides=[f"model={name}", "trainer@train=transformers"])
        ds = load_dataset(cfg.data, ("train",))
        det = build_detector(cfg.model, "/tmp/sigdet-hf-bench")
        det.model = det._build(ds.class_names)
        det.imgsz = a.imgsz
        model = det.model
        loader = torch.utils.data.DataLoader(
            _DetectionDataset(ds["train"], a.imgsz, None), batch_size=a.batch, collate_fn=_collate
        )
        it = iter(loader)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        times = []
        for i in range(a.steps + 1):
            batch = next(it)
            t = time.perf_counter()
            model.train()
            loss = TransformersTrainer(det)._step(model, batch, torch.device("cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t)
        page = np.asarray(load_rgb(ds["train"].images[0].file).resize((a.imgsz, a.imgsz)))
        e2e = measure(lambda det=det, page=page: det.predict([page], conf=0.25), a.warmup, a.runs, 0.0)
        mo = measure(det.benchmark_forward(a.imgsz), a.warmup, a.runs, 0.0)
        params = det.num_parameters() / 1e6
        rows.append((name, params, float(np.mean(times)), mo["p50_ms"], e2e["p50_ms"], e2e["std_ms"]))
        print(f"{name}: done", flush=True)
    env = environment()
    print(
        f"\nCPU: {env['cpu']}, {env['torch_threads']} torch threads, torch {env['version/torch']}, "
        f"transformers {env['version/transformers']}; imgsz {a.imgsz}; train batch {a.batch}, {a.steps} timed steps; "
        f"inference {a.warmup} warm-up + {a.runs} timed runs\n"
    )
    print(
        "| model | params (M) | s / train step | s / image (train) | inference ms, model p50 | inference ms, end-to-end p50 (std) |"
    )
    print("|---|---|---|---|---|---|")
    for n, p, s, mo, e, sd in rows:
        print(f"| {n} | {p:.1f} | {s:.2f} | {s / a.batch:.2f} | {mo:.0f} | {e:.0f} ({sd:.0f}) |")


if __name__ == "__main__":
    main()
