"""End-to-end latency of several exports of one model on one page, interleaved: the same page through each
export's chosen formats in turn, round after round, so that a noisy shared VM slows every row alike (separate
`python -m export.benchmark` runs of the same export moved by 30% on a 2-core VM).

    python benchmarks/input_shapes.py --page page.jpg --threads 2 \
        square=outputs/export/<square> rect=outputs/export/<input_hw=[640,480]> dynamic=outputs/export/<input_hw=dynamic>

Each export folder contributes its ONNX Runtime FP32 and OpenVINO INT8 rows (the formats it has, ``--formats``);
every row is timed end to end (letterbox, runtime, box decoding above ``--conf``) on the page; each round times
every row twice and keeps the second call, so switching between runtimes is not in the figures. Prints the
input shape each row ran at and p50 / p10 in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", help="name=export folder (python -m export output)")
    ap.add_argument("--page", required=True, help="the page to time")
    ap.add_argument("--formats", default="onnx,openvino_int8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--conf", type=float, default=0.25)
    a = ap.parse_args()

    from training.data.images import load_rgb
    from training.inference.exported import META, load_exported, load_meta

    page = np.asarray(load_rgb(a.page))
    rows = {}
    for spec in a.exports:
        name, _, folder = spec.partition("=")
        # the files the export wrote and passed, as its manifest lists them
        passed = {
            x["format"]: x["path"]
            for x in load_meta(Path(folder) / META).get("artifacts", [])
            if x.get("status") == "passed"
        }
        for fmt in a.formats.split(","):
            if fmt not in passed:
                print(f"{name}: no {fmt} that passed parity in {folder}")
                continue
            rows[f"{name} {fmt}"] = load_exported(Path(folder) / passed[fmt], threads=a.threads)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for model in rows.values():
        for _ in range(a.warmup):
            model.predict([page], conf=a.conf)
    for i in range(a.rounds):
        order = list(rows.items()) if i % 2 == 0 else list(reversed(rows.items()))
        for k, model in order:
            model.predict([page], conf=a.conf)
            t = time.perf_counter()
            model.predict([page], conf=a.conf)
            times[k].append(1000.0 * (time.perf_counter() - t))
    print(f"page {a.page} ({page.shape[0]} x {page.shape[1]}), {a.rounds} rounds, threads {a.threads}")
    print("| row | input | e2e p50 (ms) | e2e p10 (ms) |\n|---|---|---|---|")
    for k, model in rows.items():
        hw = next(iter(model.family.feeds(page)[0].values())).shape[2:4]  # NCHW, whatever the runner takes
        t = np.asarray(times[k])
        print(f"| {k} | {hw[0]}x{hw[1]} | {np.median(t):.1f} | {np.percentile(t, 10):.1f} |")


if __name__ == "__main__":
    main()
