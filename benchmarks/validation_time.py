"""Validation time of a dataset: a first run (empty cache) and a second one (cached), each in a fresh process;
and the time to build ultralytics' YOLO conversion cache after the first validation.

    python benchmarks/validation_time.py --yaml ../shared/data/signatures-xc8up/data.yaml

Since validation decodes every pixel (truncated pages fail here, not in evaluation), the first run costs a
full decode of every page; the second reads the per-content results from the cache (sha256 of each file). The
YOLO cache build reads every page with ultralytics' own reader and compares it with the pixel digest that
validation kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from omegaconf import OmegaConf
import training  # noqa: F401
from pathlib import Path
from training.data import load_dataset, prepare_yolo
cfg = OmegaConf.load(sys.argv[1])
cfg.yaml, cfg.cache_dir = sys.argv[2], sys.argv[3]
t1 = time.perf_counter()
ds = load_dataset(cfg, ("train", "val", "test"))
t2 = time.perf_counter()
prepare_yolo(ds, Path(sys.argv[3]))
t3 = time.perf_counter()
n = sum(len(s.images) for s in ds.splits.values())
print(json.dumps({"validate_s": t2 - t1, "yolo_cache_s": t3 - t2, "images": n}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yaml", required=True, help="data.yaml of a YOLO-format dataset")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rows, child = [], [sys.executable, "-c", CHILD, str(ROOT / "conf/data/yolo_folder.yaml"), a.yaml]
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as cache:
            for run in ("first", "second"):
                out = subprocess.run([*child, cache], cwd=ROOT, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"run": run, **r})
    n = rows[0]["images"]
    builds = sorted(r["yolo_cache_s"] for r in rows if r["run"] == "first")
    print(f"YOLO cache build: median {builds[len(builds) // 2]:.2f} s over {len(builds)}, all {builds}")
    for run in ("first", "second"):
        times = sorted(r["validate_s"] for r in rows if r["run"] == run)
        print(
            f"{run:6s} run: median {times[len(times) // 2]:.2f} s over {len(times)} ({n} images), all {times}"
        )


if __name__ == "__main__":
    main()
