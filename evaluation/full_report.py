"""``python -m evaluation.full_report``: finished runs -> one Markdown + HTML report, ours beside the published.

Sections (each optional; a missing run is a line saying which command produces it):

1. model selection (``python -m evaluation.model_selection``): CPU ms, mAP50, mAP50-95 per model;
2. base vs tuned (``tuning=``, a ``python -m training.sweep`` folder): mAP50, mAP50-95, precision, recall, F1;
3. final test results (a ``python -m training`` or ``python -m evaluation`` run with ``test/*`` metrics);
4. ONNX (CPU) vs TensorRT (GPU) latency (``python -m export.benchmark``);
5. the region classifier's per-class table (``python -m training experiment=classifier_two_stage``).

Every number is ours, the published one (``conf/report/published.yaml``, with its source), and the difference;
every section says which data, hardware and weights ours came from. Published numbers are never shown alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from evaluation.metrics import HEADLINE
from evaluation.model_card import load_yaml
from evaluation.report import fmt_ci, fmt_num, image_grid, markdown_table, save_figure, write_csv
from training.cli import UserError, cli


def _f(v, digits: int = 4) -> str:
    return fmt_num(v, digits, missing="")


def compare(ours, published, digits: int = 4, scale: float = 1.0) -> dict[str, str]:
    """Ours, published and ours - published (in points for fractions: ``scale=100``)."""
    diff = ""
    if ours is not None and published is not None:
        diff = f"{scale * (float(ours) - float(published)):+.{2 if scale != 1 else digits}f}"
    return {"ours": _f(ours, digits), "published": _f(published, digits), "difference": diff}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e.__class__.__name__})") from None


def _read_yaml(path: Path) -> dict:
    doc = load_yaml(path)
    if doc is not None and not isinstance(doc, dict):
        raise UserError(f"{path}: the published numbers must be a mapping, not a {type(doc).__name__}")
    return doc or {}


def _need(folder, name: str, file: str) -> Path | None:
    if not folder:
        return None
    d = Path(str(folder)).expanduser()
    if not (d / file).is_file():
        raise UserError(f"{name}={d}: not a finished {name} run (missing {file})")
    return d


class Report:
    def __init__(self, out: Path, published: dict):
        self.out, self.pub, self.md, self.figures = out, published, [], []
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def figure(self, src: Path, caption: str) -> None:
        if not src.is_file():
            return
        dst = self.out / "figures" / f"{len(self.figures):02d}_{src.name}"
        shutil.copyfile(src, dst)
        self.figures.append((dst, caption))
        self.md.append(f"![{caption}](figures/{dst.name})\n\n*{caption}*\n")

    def table(self, rows: list[dict], title: str, name: str) -> None:
        if not rows:
            return
        self.md.append(markdown_table(rows, f"### {title}\n"))
        write_csv(self.out / f"{name}.csv", rows)

    def missing(self, arg: str, *commands: str) -> None:
        """The line a section gets when no run was given: which argument, which command makes it."""
        self.md.append(f"_No run given (`{arg}` of {' or '.join(f'`{c}`' for c in commands)})._\n")

    # -- sections ---------------------------------------------------------------------------------------
    def model_selection(self, d: Path | None) -> None:
        self.md.append("## 1. Model selection\n")
        if d is None:
            return self.missing("model_selection=DIR", "python -m evaluation.model_selection")
        doc = _json(d / "model_selection.json")
        env, split = doc["environment"], doc["split"]
        pub = (self.pub.get("model_selection") or {}).get("rows") or {}
        self.md.append(
            f"Ours: data `{doc['data']}`, split `{split}`; CPU {env['cpu']} ({env.get('cpu_count')} cores), torch "
            f"{env.get('version/torch')}; weights: as trained by that run ({d}). Published: "
            f"{(self.pub.get('model_selection') or {}).get('source', 'n/a')} "
            f"(split {(self.pub.get('model_selection') or {}).get('split', 'n/a')}).\n"
        )
        rows = []
        for r in doc["results"]:
            m, p = r["metrics"], pub.get(r["model"], {})
            row = {"model": r["model"]}
            for key, ours, digits, scale in (
                ("CPU ms", r["latency"].get("model/p50_ms"), 1, 1.0),
                ("mAP50", m.get(f"{split}/mAP50"), 4, 100.0),
                ("mAP50-95", m.get(f"{split}/mAP50-95"), 4, 100.0),
            ):
                c = compare(ours, p.get({"CPU ms": "cpu_ms"}.get(key, key)), digits, scale)
                row.update(zip((f"{key} ours", f"{key} published", f"{key} diff"), c.values(), strict=True))
            rows.append(row)
        self.table(rows, "Per model (differences of mAP in points)", "model_selection")
        self.figure(d / "model_selection.png", "CPU latency vs mAP50-95 (ours)")

    def sweep(self, d: Path | None) -> None:
        self.md.append("## 2. Hyperparameter tuning: base vs tuned\n")
        if d is None:
            return self.missing("tuning=DIR", "python -m training.sweep")
        doc = _json(d / "summary.json")
        pub = (self.pub.get("base_vs_tuned") or {}).get("rows") or {}
        self.md.append(
            f"Ours: study `{doc['study_name']}` on experiment `{doc['experiment']}`, data `{doc.get('data')}`, "
            f"{doc['counts']}; objective `{doc['metric']}`; best trial {doc['best_number']} "
            f"({', '.join(f'{k}={v}' for k, v in doc['best_params'].items())}). Validation split. Published: "
            f"{(self.pub.get('base_vs_tuned') or {}).get('source', 'n/a')}.\n"
        )
        rows = []
        for k in HEADLINE:
            for which, ours in (("base", doc["base"]), ("tuned", doc["best"])):
                c = compare(ours.get(f"val/{k}"), (pub.get(which) or {}).get(k), 4, 100.0)
                rows.append({"metric": k, "model": which, **c})
        self.table(rows, "Base vs tuned (differences in points)", "base_vs_tuned")
        self.figure(d / "history.png", "Sweep history")
        self.figure(d / "importances.png", "Parameter importances")
        self.figure(d / "parallel_coordinates.png", "Trials, parallel coordinates")

    def final_test(self, d: Path | None) -> None:
        self.md.append("## 3. Final test results\n")
        if d is None:
            return self.missing("test=RUN_DIR", "python -m training", "python -m evaluation")
        doc = _json(d / "metrics.json")
        m, prov = doc["metrics"], doc.get("provenance", {})
        if "test/mAP50" not in m:
            raise UserError(
                f"test={d}: its metrics.json has no test/* metrics (evaluate with evaluation.splits=[test])"
            )
        pub = (self.pub.get("final_test") or {}).get("metrics") or {}
        self.md.append(
            f"Ours: data `{prov.get('data')}`, model `{prov.get('model')}`, weights `{prov.get('checkpoint')}`, "
            f"hardware {prov.get('hardware')} ({prov.get('device')}), torch {prov.get('torch')}. Published: "
            f"{(self.pub.get('final_test') or {}).get('source', 'n/a')}.\n"
        )
        rows = []
        for k in HEADLINE:
            ci = fmt_ci(m, f"test/{k}", missing="")
            rows.append({"metric": k, **compare(m.get(f"test/{k}"), pub.get(k), 4, 100.0), "ours 95% CI": ci})
        self.table(rows, "Test split (differences in points)", "final_test")
        self.figure(d / "pr_curve_test.png", "Precision-recall at IoU 0.5, test (ours)")
        self.figure(d / "f1_conf_test.png", "F1 vs confidence, test (ours)")

    def latency(self, d: Path | None) -> None:
        self.md.append("## 4. Latency: ONNX (CPU) vs TensorRT (GPU)\n")
        if d is None:
            return self.missing("latency=DIR", "python -m export.benchmark")
        doc = _json(d / "latency.json")
        env = doc["environment"]
        pub = self.pub.get("latency") or {}
        prow = pub.get("rows") or {}
        self.md.append(
            f"Ours: `{doc['source']}` ({doc['kind']}) at {doc['imgsz']}x{doc['imgsz']}, batch 1; CPU {env['cpu']} "
            f"({env.get('cpu_count')} cores), GPU {env.get('gpu') or 'none'}; onnxruntime "
            f"{env.get('version/onnxruntime')}, tensorrt {env.get('version/tensorrt')}. Published: "
            f"{pub.get('source', 'n/a')} ({pub.get('hardware', 'hardware not stated')}).\n"
        )
        rows = []
        for r in doc["rows"]:
            if (r["runtime"], r["device"]) not in (("ONNX Runtime", "CPU"), ("TensorRT", "CUDA")):
                continue
            key = "onnx_cpu_ms" if r["runtime"] == "ONNX Runtime" else "tensorrt_gpu_ms"
            ok = r["status"] == "ok"
            ours = r.get("model/p50_ms") if ok else None
            note = "" if ok else f"unavailable: {r.get('reason', '')}"
            runtime = f"{r['runtime']} ({r['device']}, {r['precision']})"
            rows.append({"runtime": runtime, **compare(ours, prow.get(key), 2), "note": note})
        self.table(rows, "Inference p50 (ms)", "latency")

    def classifier(self, d: Path | None) -> None:
        self.md.append("## 5. Region classifier (signature / stamp / thumb)\n")
        if d is None:
            return self.missing("classifier=RUN_DIR", "python -m training experiment=classifier_two_stage")
        doc = _json(d / "metrics.json")
        m, prov, classes = doc["metrics"], doc.get("provenance", {}), doc.get("classes", [])
        pub = (self.pub.get("classifier") or {}).get("per_class") or {}
        self.md.append(
            f"Ours: {prov.get('data')}; initial weights {prov.get('weights')}; checkpoint {prov.get('checkpoint')}; "
            f"hardware {prov.get('hardware')}, torch {prov.get('torch')}. Published: "
            f"{(self.pub.get('classifier') or {}).get('source', 'none found')}.\n"
        )
        rows = [
            {"class": c, "metric": k, **compare(m.get(f"test/{k}/{c}"), (pub.get(c) or {}).get(k), 4, 100.0)}
            for c in classes
            for k in ("precision", "recall", "f1")
        ]
        overall = (self.pub.get("classifier") or {}).get("overall") or {}
        for name, key, pkey in (
            ("accuracy", "test/accuracy", "accuracy"),
            ("macro F1", "test/macro_f1", "f1"),
        ):
            rows.append({"class": "all", "metric": name, **compare(m.get(key), overall.get(pkey), 4, 100.0)})
        self.table(rows, "Test split, per class (differences in points)", "classifier")
        counts = doc.get("counts") or {}
        pc = (self.pub.get("classifier") or {}).get("training_data_counts") or {}
        crows = [
            {"class": c, "count": k, **compare((counts.get(c) or {}).get(k), (pc.get(k) or {}).get(c), 0)}
            for c in classes
            for k in ("original", "augmented", "misclassified", "augmented_misclassified")
        ]
        self.table(
            crows,
            "Training crops per class (ours: total = the training set; the published total also counts the "
            "misclassified originals)",
            "classifier_counts",
        )
        self.figure(d / "confusion_test.png", "Confusion matrix, test (ours)")

    def overview(self) -> Path | None:
        """All figures on one page: the picture of the report."""
        if not self.figures:
            return None
        from PIL import Image

        fig, axes = image_grid(len(self.figures), 5, 4)
        for ax, (path, caption) in zip(axes, self.figures, strict=False):
            ax.imshow(Image.open(path))
            ax.set_title(caption, fontsize=9)
        return save_figure(fig, self.out / "report_overview.png")


def to_html(md: str, title: str) -> str:
    import markdown

    # Python-Markdown passes raw HTML through, and the published file's text comes from others: no tag of
    # theirs reaches the page (ours are all Markdown)
    body = markdown.markdown(md.replace("<", "&lt;"), extensions=["tables"])
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:600px}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>{body}</body></html>"


def build_report(cfg) -> dict[str, Path]:
    out = Path(str(cfg.out)).expanduser()
    if (out / "report.md").exists():
        raise UserError(f"{out} already holds a report; choose another out=")
    pub_path = Path(str(cfg.published)).expanduser()
    if not pub_path.is_absolute() and not pub_path.is_file():
        pub_path = Path(__file__).resolve().parents[1] / "conf" / pub_path
    # plain YAML, no interpolation: a ${oc.env:...} in a file from others would copy a secret into the report
    published = _read_yaml(pub_path) if pub_path.is_file() else {}
    inputs = {
        "model_selection": _need(cfg.get("model_selection"), "model_selection", "model_selection.json"),
        "sweep": _need(cfg.get("tuning"), "tuning", "summary.json"),
        "test": _need(cfg.get("test"), "test", "metrics.json"),
        "latency": _need(cfg.get("latency"), "latency", "latency.json"),
        "classifier": _need(cfg.get("classifier"), "classifier", "metrics.json"),
    }
    if not any(inputs.values()):
        raise UserError(
            "no runs given: set at least one of model_selection= tuning= test= latency= classifier="
        )
    out.mkdir(parents=True, exist_ok=True)
    r = Report(out, published)
    r.md.append(
        "# Signature detection: reproduced results\n\n"
        f"Each table: ours, the published number, and ours - published. Published numbers from "
        f"`{pub_path.name}` ({(published.get('source') or {}).get('blog', 'no source file')}); ours from the runs "
        "named in each section. Small CPU runs reproduce the pipeline, not the published accuracy.\n"
    )
    r.model_selection(inputs["model_selection"])
    r.sweep(inputs["sweep"])
    r.final_test(inputs["test"])
    r.latency(inputs["latency"])
    r.classifier(inputs["classifier"])
    overview = r.overview()
    md = "\n".join(r.md)
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(to_html(md, "Signature detection report"), encoding="utf-8")
    print(md)
    return {"md": out / "report.md", "html": out / "report.html", "overview": overview}


@cli("report")
def main(cfg: DictConfig) -> None:
    paths = build_report(cfg)
    print(f"wrote {paths['md']} and {paths['html']}")


if __name__ == "__main__":
    main()
