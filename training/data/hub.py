"""Remote sources: the Hugging Face dataset (parquet: image + objects{bbox, category, ...}) and Roboflow.

Both are materialised once into the cache as a Roboflow-style COCO folder and then read like any local COCO
dataset. Offline, both fail with one line saying what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
from pathlib import Path

from training.cli import DataError, OfflineError, UserError, first_line, optional_import
from training.data.coco import coco_ann, dump_coco
from training.fileio import publish_dir

log = logging.getLogger(__name__)

ANNOTATION_FILE = "_annotations.coco.json"


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    # library errors echo request URLs, API keys included (roboflow: '/?api_key=...')
    msg = re.sub(r"(api_key|token|key)=[^&\s'\"]+", r"\1=***", msg, flags=re.I)
    for env in ("ROBOFLOW_API_KEY", "HF_TOKEN", "WANDB_API_KEY"):
        if os.environ.get(env):
            msg = msg.replace(os.environ[env], "***")
    return f"{e.__class__.__name__}: {msg[:200]}" if msg else e.__class__.__name__


def _class_names(features) -> list[str]:
    """Find the ClassLabel of ``objects.category`` whatever the datasets version nests it in."""
    from datasets import ClassLabel

    obj = getattr(features["objects"], "feature", features["objects"])  # Sequence(dict) / List(dict)
    cat = obj.get("category") if isinstance(obj, dict) else None
    while cat is not None and not isinstance(cat, ClassLabel) and hasattr(cat, "feature"):
        cat = cat.feature
    return list(cat.names) if isinstance(cat, ClassLabel) else []


def _rows_objects(objects) -> list[dict]:
    if isinstance(objects, dict):  # Sequence of dict: a dict of equal-length lists
        return [dict(zip(objects, row, strict=True)) for row in zip(*objects.values(), strict=True)]
    return list(objects or [])


def load_hf_dataset(path: str, revision: str | None = None):
    """Load a DatasetDict from a local ``save_to_disk`` folder, a local parquet folder, or a hub id."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a dependency
        raise UserError("the 'datasets' package is needed for data.format=hf") from e
    local = Path(path).expanduser()
    try:
        if local.is_dir() and (local / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(local))
        if local.exists():
            return datasets.load_dataset(str(local))
        return datasets.load_dataset(path, revision=revision)
    except Exception as e:
        raise OfflineError(
            f"could not load Hugging Face dataset '{path}' ({_short(e)}); on a machine with access run "
            f"`hf download {path} --repo-type dataset --local-dir DIR` and set data.path=DIR"
        ) from None


def materialize_hf(path: str, revision: str | None, split_names: dict[str, str], cache_dir: Path) -> Path:
    """Write the HF dataset as ``<cache>/hf/<fingerprint>/<split>/{images, _annotations.coco.json}``."""
    from datasets import Image as HFImage
    from PIL import Image

    from training.compat.datasets import fingerprint as hf_fingerprint

    dsd = load_hf_dataset(path, revision)
    missing = [s for s in split_names.values() if s not in dsd]
    if missing:
        raise UserError(f"Hugging Face dataset '{path}': no split(s) {missing}; it has {sorted(dsd)}")
    fingerprint = "-".join(hf_fingerprint(dsd[s]) for s in sorted(split_names.values()))
    root = cache_dir / "hf" / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    if (root / ".complete").is_file():
        log.info("reusing materialised HF dataset %s", root)
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in split_names.values():
        ds = dsd[folder]
        missing = {"image", "objects"} - set(ds.features)
        if missing:
            raise DataError(
                f"{path}: split '{folder}' has no column {sorted(missing)} (columns {sorted(ds.features)}; "
                "the schema of tech4humans/signature-detection: image, objects{{id, area, bbox, category}})"
            )
        names = _class_names(ds.features)
        ds = ds.cast_column("image", HFImage(decode=False))
        out = tmp / folder
        out.mkdir(parents=True)
        images, annotations = [], []
        for row_i, row in enumerate(ds):
            try:
                iid = int(row.get("image_id", row_i))
                data = row["image"].get("bytes")
                if data is None and row["image"].get("path"):
                    data = Path(row["image"]["path"]).read_bytes()
                try:
                    with Image.open(io.BytesIO(data or b"")) as im:
                        fmt = (im.format or "PNG").lower()
                        w, h = im.size
                except (OSError, ValueError, SyntaxError, ImportError, Image.DecompressionBombError) as e:
                    # the pixels are checked again, fully, when the materialised folder is validated
                    raise DataError(
                        f"{path}: split '{folder}', row {row_i}: unreadable image ({e.__class__.__name__})"
                    ) from None
                name = f"{iid}.{'jpg' if fmt == 'jpeg' else fmt}"
                (out / name).write_bytes(data)
                width, height = int(row.get("width") or w), int(row.get("height") or h)
                images.append({"id": iid, "file_name": name, "width": width, "height": height})
                for obj in _rows_objects(row["objects"]):
                    aid = int(obj["id"]) if obj.get("id") is not None else len(annotations)
                    bbox, area = [float(v) for v in obj["bbox"]], float(obj.get("area") or 0.0)
                    annotations.append(coco_ann(aid, iid, int(obj["category"]), bbox, area))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                # a dataset from others: a row without objects / bbox, an id that is not a number
                raise DataError(
                    f"{path}: split '{folder}', row {row_i}: malformed ({e.__class__.__name__}: {first_line(e, 120)})"
                ) from None
        if names:
            categories = [{"id": i, "name": str(n), "supercategory": "none"} for i, n in enumerate(names)]
        else:  # plain integer categories: keep their ids
            ids = sorted({a["category_id"] for a in annotations})
            categories = [{"id": int(c), "name": str(c), "supercategory": "none"} for c in ids]
        if names and len(names) > 1:
            # RF100 exports keep Roboflow's placeholder class 0 (the project name) as supercategory of the rest.
            for c in categories[1:]:
                c["supercategory"] = names[0]
        dump_coco(out / ANNOTATION_FILE, images, annotations, categories)
    (tmp / ".complete").write_text(path, encoding="utf-8")
    return publish_dir(tmp, root)


def download_roboflow(workspace: str, project: str, version: int, cache_dir: Path, api_key_env: str) -> Path:
    """Download a Roboflow project version in COCO format into the cache (once) and return its folder."""
    root = cache_dir / "roboflow" / f"{workspace}__{project}__v{version}"
    if (root / ".complete").is_file():
        return root
    key = os.environ.get(api_key_env)
    if not key:
        raise UserError(
            f"Roboflow download of {workspace}/{project}/{version} needs an API key in ${api_key_env}"
        )
    roboflow = optional_import("roboflow", "roboflow", "data=roboflow")
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rf = roboflow.Roboflow(api_key=key)
        rf.workspace(workspace).project(project).version(int(version)).download(
            "coco", location=str(tmp), overwrite=True
        )
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OfflineError(
            f"could not download Roboflow project {workspace}/{project}/{version} ({_short(e)}); export it in COCO "
            f"format from universe.roboflow.com and point data=coco_folder data.root=DIR at it"
        ) from None
    (tmp / ".complete").write_text(f"{workspace}/{project}/{version}", encoding="utf-8")
    return publish_dir(tmp, root)
