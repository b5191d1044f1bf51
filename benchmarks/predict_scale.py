"""Prediction at scale: PDF to pages.jsonl against inference alone, and peak memory over a growing source.

    python benchmarks/predict_scale.py --model exports/<run> [--pages 300] [--batch 8] [--rss 100,2000] [pdf.dpi=100]

Builds a PDF of ``--pages`` pages from the embedded test pages (cycled), then, each in a fresh process:

- **inference only**: the same model on pages already rendered into memory (the first ``--pages`` pages, at the same
  dpi), called in batches of ``--batch``: pages/s of ``model.predict`` alone;
- **end to end**: ``predict_sources`` (what ``sigdet predict`` runs) on the PDF: rendering in its background thread,
  inference, one flushed line per page into pages.jsonl, then predictions.json / documents.csv; the model is loaded
  and warmed up before the timing, as for inference only;
- **peak RSS** (``ru_maxrss``) of end-to-end runs over PDFs of each ``--rss`` page count.

Prints one JSON object and a Markdown table; run it alone on the machine (it times things).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_TEST = ROOT / "training" / "assets" / "signatures-xc8up-mini" / "test"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, model, pdf, out, batch, n = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
from training.cli import compose
from evaluation.predict import Predictor, predict_sources, render
cfg = compose("predict", [f"batch={batch}", "save.csv=false", *sys.argv[7:]], run_dir=out)
cfg.checkpoint, cfg.source = model, pdf
t0 = time.perf_counter()
predictor = Predictor.from_config(cfg, out)
load_s = time.perf_counter() - t0
if mode == "infer":
    from evaluation.predict import pages, collect
    todo, _ = pages(collect([pdf])[0], None)
    arrays = [a for _, a in render(todo[:n], float(cfg.pdf.dpi), None, int(cfg.max_image_pixels), [])]
    predictor.model.predict(arrays[:batch], conf=0.001, imgsz=None)  # warm-up, NMS (torchvision) loaded too
    t1 = time.perf_counter()
    for i in range(0, len(arrays), batch):
        predictor.model.predict(arrays[i : i + batch], conf=predictor.conf, imgsz=None)
    dt = time.perf_counter() - t1
    result = {"pages": len(arrays), "seconds": dt}
else:
    import evaluation.predict as ep
    out.mkdir(parents=True)
    # the model loaded and warmed up once, outside the timing (the inference-only run warms up too)
    first = next(render(ep.pages(ep.collect([pdf])[0], None)[0][:1], float(cfg.pdf.dpi), None, int(cfg.max_image_pixels), []))[1]
    predictor.model.predict([first] * batch, conf=0.001, imgsz=None)  # boxes: NMS (torchvision) loaded too
    ep.Predictor.from_config = classmethod(lambda cls, cfg, run_dir=".": predictor)
    t1 = time.perf_counter()
    summary = predict_sources(cfg, out)
    dt = time.perf_counter() - t1
    result = {"pages": summary["n_pages"], "seconds": dt}
result |= {"pages_per_s": result["pages"] / result["seconds"], "load_s": load_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
print(json.dumps(result))
"""


def make_pdf(path: Path, n: int) -> Path:
    from PIL import Image

    pages = [Image.open(p).convert("RGB") for p in sorted(EMBEDDED_TEST.glob("*.jpg"))]
    seq = [pages[i % len(pages)] for i in range(n)]
    seq[0].save(path, save_all=True, append_images=seq[1:], resolution=72)
    return path


def child(mode: str, model: str, pdf: Path, out: Path, batch: int, n: int, extra: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, model, str(pdf), str(out), str(batch), str(n), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "CI": "true"},
    )
    if r.returncode != 0:
        sys.exit(f"error: the {mode} child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint or an export (file or folder)")
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rss", default="100,2000", help="page counts of the peak-memory runs")
    ap.add_argument("overrides", nargs="*", help="predict overrides for every run, e.g. pdf.dpi=100")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pdf = make_pdf(tmp / f"pages_{args.pages}.pdf", args.pages)
        infer = child(
            "infer", args.model, pdf, tmp / "infer", args.batch, min(args.pages, 100), args.overrides
        )
        e2e = child("e2e", args.model, pdf, tmp / "e2e", args.batch, args.pages, args.overrides)
        rss = {}
        for n in (int(x) for x in args.rss.split(",")):
            big = make_pdf(tmp / f"rss_{n}.pdf", n)
            rss[n] = child("e2e", args.model, big, tmp / f"rss{n}", args.batch, n, args.overrides)
    res = {
        "model": args.model,
        "batch": args.batch,
        "overrides": args.overrides,
        "infer": infer,
        "e2e": e2e,
        "rss": rss,
    }
    res["e2e_over_infer"] = e2e["pages_per_s"] / infer["pages_per_s"]
    counts = sorted(rss)
    res["rss_growth"] = rss[counts[-1]]["peak_rss_mb"] / rss[counts[0]]["peak_rss_mb"] - 1
    print(json.dumps(res, indent=1))
    print("\n| what | pages | pages/s | peak RSS MB |\n|---|---|---|---|")
    print(
        f"| inference only, batch {args.batch} | {infer['pages']} | {infer['pages_per_s']:.2f} | {infer['peak_rss_mb']:.0f} |"
    )
    print(
        f"| PDF -> pages.jsonl | {e2e['pages']} | {e2e['pages_per_s']:.2f} ({res['e2e_over_infer']:.0%} of inference) | {e2e['peak_rss_mb']:.0f} |"
    )
    for n in counts:
        print(f"| PDF -> pages.jsonl | {n} | {rss[n]['pages_per_s']:.2f} | {rss[n]['peak_rss_mb']:.0f} |")
    print(f"\npeak RSS at {counts[-1]} pages vs {counts[0]}: {res['rss_growth']:+.1%}")


if __name__ == "__main__":
    main()
