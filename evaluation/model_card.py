"""A Hugging Face-style model card (``README.md``) for any finished run: ultralytics ``.pt`` runs, transformers run
folders and region-classifier runs alike, written from what the run recorded.

Read: ``metrics.json`` (required: every metric and its provenance), ``config.yaml`` (the resolved config, secrets
masked) or else ``.hydra/config.yaml``, and ``.hydra/overrides.yaml`` / ``.hydra/hydra.yaml`` for the command
that reproduces the run. Written: YAML front matter (``library_name``, ``pipeline_tag``, ``tags``, ``datasets``
for a hub dataset, a ``model-index`` of the headline metrics), the headline metrics per split with their 95%
bootstrap intervals, the data and its licence where known, hardware / device / torch, the training budget, the
command, how to use the weights.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.metrics import HEADLINE
from evaluation.report import fmt_ci, fmt_num
from training.cli import UserError, first_line
from training.tracking import redact

CARD = "README.md"
# headline metrics with 95% intervals: the detectors' (evaluation/metrics.py), then the classifier's
CLASSIFIER_HEADLINE = ("accuracy", "macro_f1")
METRIC_NAMES = {
    "mAP50": "mAP@0.5 (COCO, pycocotools)",
    "mAP50-95": "mAP@0.5:0.95 (COCO, pycocotools)",
    "precision": "precision at the max-F1 confidence",
    "recall": "recall at the max-F1 confidence",
    "f1": "F1 at the max-F1 confidence",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
}
# root config (.hydra/hydra.yaml hydra.job.config_name) -> the module that runs it
ENTRY_POINTS = {"train": "training", "evaluate": "evaluation"}
# licences of data we know (conf/data names; Roboflow Universe projects)
KNOWN_LICENCES = {
    "signatures-xc8up-mini": "CC BY 4.0: a subset of signatures-xc8up v2 (Roboflow 100) by Pierrick Dossin, "
    "see training/assets/signatures-xc8up-mini/LICENSE.md",
    "roboflow-100/signatures-xc8up": "CC BY 4.0: signatures-xc8up (Roboflow 100) by Pierrick Dossin",
}
LIBRARIES = {"transformers": "transformers", "ultralytics": "ultralytics", "classifier": "pytorch"}


@dataclass
class RunRecord:
    """What a run folder recorded: ``metrics.json`` and, when present, its config and command."""

    run_dir: Path
    metrics: dict
    provenance: dict
    doc: dict  # the whole metrics.json (classifier runs add ``classes`` and ``counts``)
    config: dict = field(default_factory=dict)  # config.yaml (or .hydra/config.yaml); {} when neither exists
    overrides: list[str] | None = None  # .hydra/overrides.yaml
    config_name: str | None = None  # .hydra/hydra.yaml hydra.job.config_name

    @property
    def backend(self) -> str:
        """``transformers`` / ``ultralytics`` / ``classifier`` (the config's, else told from the weights)."""
        backend = (self.config.get("model") or {}).get("backend")
        if backend:
            return str(backend)
        if "classes" in self.doc:  # evaluation/classification.py records the classifier's classes
            return "classifier"
        weights = best_weights(self)
        if weights is None:
            return "unknown"
        from training.backends import backend_of

        try:
            return backend_of(weights)
        except UserError:  # unreadable weights: the card is still written, the upload would fail on them
            return "unknown"

    @property
    def is_classifier(self) -> bool:
        """Whether the run is the region classifier's (accuracy / macro F1 instead of mAP)."""
        return self.backend == "classifier"

    @property
    def model_name(self) -> str:
        """The config's ``model.name``, else the provenance's model; an evaluation run (whose ``model.name`` is
        only its backend) is named after its checkpoint."""
        name = str((self.config.get("model") or {}).get("name") or self.provenance.get("model") or "model")
        checkpoint = self.provenance.get("checkpoint")
        if name == self.config.get("backend") and checkpoint:
            return f"{Path(checkpoint).name} ({name})"
        return name


def load_yaml(path: Path):
    """A YAML file as plain containers, interpolations left as text (never resolved: files may come from others);
    one line naming the file when it is not YAML."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # YAML syntax, wrong encoding: one line naming the file
        raise UserError(f"{path}: not a readable YAML file ({first_line(e, 120)})") from None


def read_run(run_dir: str | Path) -> RunRecord:
    """The records of a finished run folder.

    Raises:
        UserError: ``metrics.json`` is missing or malformed, or a config file is not YAML.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise UserError(
            f"{path}: not found; a run folder of python -m training or python -m evaluation holds one"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
            raise ValueError('no "metrics" object')
        if not isinstance(doc.get("provenance", {}), dict):
            raise ValueError('"provenance" is not an object')
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: malformed metrics.json ({first_line(e, 120)})") from None
    rec = RunRecord(run_dir, doc["metrics"], doc.get("provenance") or {}, doc)
    for cfg_path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if cfg_path.is_file():
            cfg = load_yaml(cfg_path)
            rec.config = cfg if isinstance(cfg, dict) else {}
            break
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        rec.overrides = [str(o) for o in (load_yaml(overrides) or [])]
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        job = ((load_yaml(hydra_yaml) or {}).get("hydra") or {}).get("job") or {}
        rec.config_name = job.get("config_name")
    return rec


def best_weights(rec: RunRecord) -> Path | None:
    """The run's best weights: ``weights/best`` (a transformers run folder) or ``weights/best.pt``, else the
    checkpoint its provenance names (an evaluation run) when it exists; None when there are none."""
    for p in (rec.run_dir / "weights" / "best", rec.run_dir / "weights" / "best.pt"):
        if p.exists():
            return p
    named = rec.provenance.get("checkpoint")
    return Path(named) if named and Path(named).exists() else None


def splits_of(rec: RunRecord) -> list[str]:
    """Evaluated splits (val and test first), those with a headline metric."""
    names = HEADLINE + CLASSIFIER_HEADLINE
    found = {k.split("/", 1)[0] for k in rec.metrics if k.count("/") == 1 and k.split("/", 1)[1] in names}
    found -= {"train"}
    order = {"val": 0, "test": 1}
    return sorted(found, key=lambda s: (order.get(s, 2), s))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def headline(rec: RunRecord) -> tuple[str, ...]:
    """The metrics a card leads with (and puts in its model-index): the detectors' or the classifier's."""
    return CLASSIFIER_HEADLINE if rec.is_classifier else HEADLINE


def command(rec: RunRecord) -> str | None:
    """``python -m <entry point> <overrides>`` that reproduces the run; None when its overrides were not kept."""
    if rec.overrides is None:
        return None
    name = rec.config_name or ("evaluate" if rec.config.get("task_name") == "evaluate" else "train")
    module = ENTRY_POINTS.get(str(name), "training")
    return " ".join(["python", "-m", module, *(shlex.quote(o) for o in redact(list(rec.overrides)))])


def data_info(rec: RunRecord) -> tuple[str, str | None, str]:
    """(description, hub dataset id or None, licence note) of the run's data."""
    data = rec.config.get("data") or {}
    name = str(data.get("name") or rec.provenance.get("data") or "unknown")
    fmt = data.get("format")
    hub_id = None
    if fmt == "hf":
        hub_id = str(data.get("path"))
        desc = f"`{name}`: Hugging Face dataset `{hub_id}`" + (
            f" (revision {data['revision']})" if data.get("revision") else ""
        )
    elif fmt == "roboflow":
        rf = data.get("roboflow") or {}
        desc = f"`{name}`: Roboflow Universe {rf.get('workspace')}/{rf.get('project')} v{rf.get('version')}"
    elif fmt == "synthetic":
        desc = f"`{name}`: synthetic pages of training/data/synthetic.py ({data.get('synthetic')})"
    elif fmt in ("coco", "yolo"):
        where = data.get("root") or data.get("yaml")
        desc = f"`{name}`: a local {fmt.upper()} folder ({where})"
    else:
        desc = f"`{name}`"
    return desc, hub_id, licence(data, name)


def licence(data: dict, name: str) -> str:
    """The data's licence when known (our embedded data, Roboflow's export note), else what to check."""
    if name in KNOWN_LICENCES:
        return KNOWN_LICENCES[name]
    rf = data.get("roboflow") or {}
    key = f"{rf.get('workspace')}/{rf.get('project')}"
    if key in KNOWN_LICENCES:
        return KNOWN_LICENCES[key]
    if data.get("format") == "hf":
        return f"see the dataset card, https://huggingface.co/datasets/{data.get('path')}"
    if data.get("format") == "synthetic":
        return "generated pages, no third-party images"
    root = data.get("root")
    for readme in ("README.dataset.txt", "README.roboflow.txt"):
        p = Path(str(root)) / readme if root else None
        if p is not None and p.is_file():
            m = re.search(r"^License:\s*(.+)$", p.read_text(encoding="utf-8", errors="replace"), re.M)
            if m:
                return f"{m.group(1).strip()} (from {p.name})"
    return "unknown: check the data's terms before sharing weights trained on it"


def _front_matter(rec: RunRecord, splits: list[str], hub_id: str | None) -> str:
    import yaml

    backend = rec.backend
    task = "image-classification" if rec.is_classifier else "object-detection"
    tags = ["sigdet", "signature-detection", task, backend]
    model = rec.config.get("model") or {}
    for extra in (model.get("family"), model.get("arch"), rec.model_name):
        if extra and str(extra) not in tags:
            tags.append(str(extra))
    meta: dict = {"library_name": LIBRARIES.get(backend, backend), "pipeline_tag": task, "tags": tags}
    if hub_id:
        meta["datasets"] = [hub_id]
    results = []
    for split in splits:
        metrics = [
            {"type": m, "value": round(float(rec.metrics[f"{split}/{m}"]), 4), "name": METRIC_NAMES[m]}
            for m in headline(rec)
            if _finite(rec.metrics.get(f"{split}/{m}"))
        ]
        if metrics:
            name = str((rec.config.get("data") or {}).get("name") or rec.provenance.get("data") or "data")
            results.append(
                {
                    "task": {"type": task},
                    "dataset": {"name": name, "type": hub_id or name, "split": split},
                    "metrics": metrics,
                }
            )
    if results:
        meta["model-index"] = [{"name": rec.model_name, "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _results(rec: RunRecord, splits: list[str]) -> list[str]:
    cols = [c for s in splits for c in (s, f"{s} 95% CI")]
    lines = ["| metric | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for m in headline(rec):
        if not any(f"{s}/{m}" in rec.metrics for s in splits):
            continue
        cells = []
        for s in splits:
            cells += [fmt_num(rec.metrics.get(f"{s}/{m}")), fmt_ci(rec.metrics, f"{s}/{m}")]
        lines.append(f"| {METRIC_NAMES[m]} | " + " | ".join(cells) + " |")
    counts, resamples = [], set()
    for s in splits:
        n = {k: rec.metrics.get(f"{s}/n_{k}") for k in ("images", "boxes")}
        if any(_finite(v) for v in n.values()):
            counts.append(f"{s} " + ", ".join(f"{int(v)} {k}" for k, v in n.items() if _finite(v)))
        if _finite(rec.metrics.get(f"{s}/n_bootstrap")):
            resamples.add(int(rec.metrics[f"{s}/n_bootstrap"]))
    if counts:
        lines += ["", "Evaluated on " + "; ".join(counts) + "."]
    if resamples:
        n = "/".join(str(r) for r in sorted(resamples))
        lines.append(f"95% intervals: {n} bootstrap resamples of the images.")
    return lines


def _usage(rec: RunRecord, repo_id: str | None) -> list[str]:
    backend = rec.backend
    where = repo_id or "<this folder>"
    if backend == "transformers":
        lines = [
            "```python",
            "from transformers import pipeline",
            "",
            f'detector = pipeline("object-detection", model="{where}")',
            'detector("page.png", threshold=0.5)  # [{"score", "label", "box"}] in the page\'s pixels',
            "```",
        ]
        frame = _box_frame(rec)
        if frame == "canvas":
            lines += [
                "",
                "Trained before the boxes were normalised to the image (`sigdet.json` names no `box_frame`): the "
                "pipeline's boxes are right on square pages only; `python -m evaluation` and sigdet's `predict` "
                "decode them right on any page.",
            ]
        return lines
    if backend == "ultralytics":
        return [
            "```python",
            "from ultralytics import YOLO  # RTDETR for an RT-DETR run",
            "",
            'model = YOLO("best.pt")',
            'model.predict("page.png")',
            "```",
            "",
            "or with sigdet's evaluator: `python -m evaluation checkpoint=best.pt`.",
        ]
    if backend == "classifier":
        return [
            "```bash",
            "python -m training.classifier.infer checkpoint=best.pt pages=/scans out=/tmp/marks",
            "```",
        ]
    return []


def _box_frame(rec: RunRecord) -> str | None:
    weights = best_weights(rec)
    meta = weights / "sigdet.json" if weights is not None and weights.is_dir() else None
    if meta is None or not meta.is_file():
        return None
    try:
        return str(json.loads(meta.read_text(encoding="utf-8")).get("box_frame", "canvas"))
    except (OSError, ValueError):
        return None


def model_card(rec: RunRecord, repo_id: str | None = None) -> str:
    """The card's Markdown text (front matter included) for the run ``rec``; ``repo_id``: where it is published."""
    splits = splits_of(rec)
    data_desc, hub_id, data_licence = data_info(rec)
    prov = rec.provenance
    kind = "region classifier (signature / stamp / thumb)" if rec.is_classifier else "signature detector"
    out = [_front_matter(rec, splits, hub_id), f"# {rec.model_name}: handwritten-{kind}", ""]
    out += [
        f"{'An' if rec.backend[:1] in 'aeiou' else 'A'} {rec.backend} model trained and evaluated with sigdet. Every number below comes from the run's "
        "`metrics.json`, computed by sigdet's one evaluator for every model family.",
        "",
        "## Results",
        "",
    ]
    out += _results(rec, splits) if splits else ["No evaluated split in metrics.json."]
    train = {k: rec.metrics.get(f"train/{k}") for k in ("epochs", "steps", "time_s", "images")}
    out += ["", "## Data", "", f"- Data: {data_desc}", f"- Licence of the data: {data_licence}"]
    if _finite(train["images"]):
        out.append(f"- Training images: {int(train['images'])}")
    out += ["", "## Training", ""]
    budget = [
        f"{int(train['epochs'])} epochs" if _finite(train["epochs"]) else "",
        f"{int(train['steps'])} steps" if _finite(train["steps"]) else "",
        f"{train['time_s'] / 60:.1f} min" if _finite(train["time_s"]) else "",
    ]
    if any(budget):
        out.append("- Budget: " + ", ".join(b for b in budget if b))
    for key, label in (("hardware", "Hardware"), ("device", "Device"), ("torch", "torch")):
        if prov.get(key):
            out.append(f"- {label}: {prov[key]}")
    if prov.get("weights"):
        out.append(f"- Initial weights: {prov['weights']}")
    out += ["", "## Reproduce", ""]
    cmd = command(rec)
    if cmd:
        out += ["```bash", cmd, "```"]
    else:
        out.append("The run kept no `.hydra/overrides.yaml`; its resolved config is `config.yaml`.")
    usage = _usage(rec, repo_id)
    if usage:
        out += ["", "## Use", "", *usage]
    return "\n".join(out) + "\n"


def write_model_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``run_dir/README.md``, the model card of a finished run, from its ``metrics.json`` and configs.

    Args:
        run_dir: a run folder of ``python -m training`` (any backend) or ``python -m evaluation``.
        repo_id: the Hugging Face repo the card is published in (named in its usage snippet).

    Returns:
        The card's path.

    Raises:
        UserError: ``metrics.json`` is missing or malformed (the message names the file).
    """
    rec = read_run(run_dir)
    path = rec.run_dir / CARD
    path.write_text(model_card(rec, repo_id), encoding="utf-8")
    return path
