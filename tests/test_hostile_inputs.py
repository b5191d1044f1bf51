"""Inputs and faults a hostile or unlucky user brings (issue 40), as one table: each case builds its files, runs
the command a user would (a fresh process, offline), and states the exit code and the message expected. A case
that hangs fails at its timeout; a traceback fails every case."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import EMBEDDED, TINY, run_module

pytestmark = pytest.mark.slow  # a fresh interpreter per case

IMAGES = sorted((EMBEDDED / "test").glob("*.jpg"))
SHIPPED = "checkpoint=${asset:pretrained/signatures-yolov8n.pt}"


@dataclass
class Case:
    family: str
    build: Callable[[Path], tuple[str, list[str]]]  # tmp -> (module, args)
    rc: int
    message: str  # a substring of stderr (rc 2: its one line) or, rc 0, of stdout + stderr
    check: Callable[[Path], None] | None = None  # more facts about what the run wrote


def _links(tmp: Path):
    src = tmp / "scans"
    (src / "sub").mkdir(parents=True)
    shutil.copy(IMAGES[0], src / "a.jpg")
    shutil.copy(IMAGES[1], src / "sub" / "b.jpg")
    (src / "loop").symlink_to(src)
    (src / "sub" / "up").symlink_to(src)
    (src / "gone.jpg").symlink_to(tmp / "missing.jpg")
    return "evaluation.predict", [f"source='{src}/**/*.jpg'", f"hydra.run.dir={tmp / 'run'}"]


def _two_pages_once(tmp: Path) -> None:
    pages = [json.loads(x) for x in (tmp / "run" / "pages.jsonl").read_text().splitlines()]
    assert sorted(Path(p["file"]).name for p in pages) == ["a.jpg", "b.jpg"]


def _tiff(tmp: Path):
    pages = [Image.open(p).convert("RGB") for p in IMAGES[:3]]
    pages[0].save(tmp / "fax.tif", save_all=True, append_images=pages[1:])
    return "evaluation.predict", [f"source={tmp / 'fax.tif'}", f"hydra.run.dir={tmp / 'run'}"]


def _three_pages(tmp: Path) -> None:
    pages = [json.loads(x) for x in (tmp / "run" / "pages.jsonl").read_text().splitlines()]
    assert [p["page"] for p in pages] == [1, 2, 3]


def _coco(tmp: Path, edit: Callable[[dict], None], folder: str = "valid") -> Path:
    root = tmp / "data"
    shutil.copytree(EMBEDDED, root)
    f = root / folder / "_annotations.coco.json"
    doc = json.loads(f.read_text())
    edit(doc)
    f.write_text(json.dumps(doc))
    return root


def _evaluate(tmp: Path, root: Path, *extra: str):
    return "evaluation", [
        SHIPPED,
        "data=coco_folder",
        f"data.root={root}",
        "evaluation.splits=[val]",
        "evaluation.n_bootstrap=0",
        "evaluation.ultralytics_metrics=false",
        f"hydra.run.dir={tmp / 'run'}",
        *extra,
    ]


def _all_crowd(tmp: Path):
    def crowd(doc):
        for a in doc["annotations"]:
            a["iscrowd"] = 1

    return _evaluate(tmp, _coco(tmp, crowd))


def _scores_nothing_found(tmp: Path) -> None:
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["val/mAP50"] == 0.0  # was 1.0: crowd regions counted as boxes found


def _same_file_twice(tmp: Path):
    def twice(doc):
        im = doc["images"][0]
        doc["images"].append(dict(im, id=max(i["id"] for i in doc["images"]) + 1))

    return _evaluate(tmp, _coco(tmp, twice))


def _split_is_another(tmp: Path):
    root = tmp / "yolo"
    for split in ("valid", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    for im in IMAGES[:3]:
        shutil.copy(im, root / "valid" / "images" / im.name)
        (root / "valid" / "labels" / f"{im.stem}.txt").write_text("0 0.5 0.5 0.2 0.1\n")
    doc = {
        "train": "valid/images",
        "val": "valid/images",
        "test": "valid/images",
        "nc": 1,
        "names": ["signature"],
    }
    (root / "data.yaml").write_text(yaml.safe_dump(doc))
    return "evaluation", [
        SHIPPED,
        "data=yolo_folder",
        f"data.yaml={root / 'data.yaml'}",
        "evaluation.splits=[val,test]",
        f"hydra.run.dir={tmp / 'run'}",
    ]


def _run_dir_is_a_file(tmp: Path):
    (tmp / "a_file").write_text("x")
    return "evaluation.predict", [f"source={IMAGES[0]}", f"hydra.run.dir={tmp / 'a_file' / 'run'}"]


def _misspelt_added_key(tmp: Path):
    return _evaluate(tmp, EMBEDDED, "+evaluation.n_bootstap=5")


def _empty_pdf(tmp: Path):
    import pypdfium2

    pypdfium2.PdfDocument.new().save(tmp / "empty.pdf")
    return "evaluation.predict", [f"source={tmp / 'empty.pdf'}", f"hydra.run.dir={tmp / 'run'}"]


CASES = {
    "predict: symlink loops and a broken link in a ** glob": Case(
        "links", _links, 0, "already walked", _two_pages_once
    ),
    "predict: a 3-page TIFF": Case("paging", _tiff, 0, "", _three_pages),
    "predict: a PDF of no pages": Case("paging", _empty_pdf, 2, "empty.pdf: unreadable PDF"),
    "evaluate: every box iscrowd=1": Case("annotations", _all_crowd, 0, "", _scores_nothing_found),
    "evaluate: one file under two image ids": Case(
        "annotations", _same_file_twice, 2, "the same file as image id"
    ),
    "evaluate: test: is the val: folder": Case("annotations", _split_is_another, 2, "also in split 'val'"),
    "predict: hydra.run.dir under a file": Case(
        "unwritable", _run_dir_is_a_file, 2, "a file stands where a folder is needed"
    ),
    "evaluate: +evaluation.n_bootstap=5": Case("config", _misspelt_added_key, 2, "n_bootstrap"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, tmp_path):
    case = CASES[name]
    module, args = case.build(tmp_path)
    r = run_module(module, *args, timeout=240)  # a hang fails here
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert r.returncode == case.rc, (r.returncode, out[-3000:])
    if case.rc == 2:
        err = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(err) == 1 and case.message in err[0], r.stderr[-3000:]
    else:
        assert case.message in out, out[-3000:]
    if case.check:
        case.check(tmp_path)


# three epochs: the fault hits epoch 2's checkpoint, resume finishes epoch 3
TRAIN_TINY = [
    "experiment=quickstart",
    *(o for o in TINY if not o.startswith("train.epochs=")),
    "train.epochs=3",
]


def _epochs_saved(last: Path) -> int:
    import torch

    return int(torch.load(last, map_location="cpu", weights_only=False)["epoch"]) + 1


def test_full_disk_keeps_the_last_good_checkpoint_and_resume_completes(tmp_path):
    """The run dir's disk fills up during epoch 2's checkpoint (a real 30 MB tmpfs; an epoch's last.pt with its
    optimizer is ~12 MB): one line naming last.pt and the errno, exit 2, epoch 1's last.pt whole; after space is
    freed, resume=true completes the training (issue 40)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip(
            "cannot mount a tmpfs here (needs root); the fake-OSError variant is in tests/test_train_eval.py"
        )
    try:
        run = disk / "run"
        r = run_module("training", *TRAIN_TINY, f"hydra.run.dir={run}", timeout=600)
        err = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith(" ")]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert "last.pt" in err[-1] and "No space left on device" in err[-1], err[-3:]
        last = run / "weights" / "last.pt"
        assert _epochs_saved(last) == 1  # whole, from the last complete epoch
        assert not list((run / "weights").glob(".*.part"))
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)  # space freed
        r = run_module("training", *TRAIN_TINY, f"hydra.run.dir={run}", "resume=true", timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads((run / "metrics.json").read_text())
        assert doc["metrics"]["train/epochs"] == 3 and "val/mAP50" in doc["metrics"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_failed_checkpoint_write_leaves_the_last_good_one(tmp_path, monkeypatch):
    """The same fault without a mount: epoch 2's checkpoint write fails half-way (ENOSPC, as a full disk raises it
    from write(), naming no file). The error names last.pt and reads as one line; epoch 1's last.pt is whole; resume
    completes the run in this process."""
    import errno

    from evaluation.run import evaluate_run, validator
    from tests.conftest import compose_cfg
    from training.cli import unwritable_line
    from training.train import train

    real, writes = Path.write_bytes, []

    def full_disk(self, data):
        if self.name == ".last.pt.part":
            writes.append(self)
            if len(writes) == 2:
                with open(self, "wb") as f:
                    f.write(data[: len(data) // 2])  # torn, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    cfg = compose_cfg("train", TRAIN_TINY, tmp_path)
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError) as e:
        train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    monkeypatch.undo()
    last = Path(cfg.paths.run_dir) / "weights" / "last.pt"
    assert e.value.filename == str(last)
    line = unwritable_line(e.value)
    assert line and "No space left on device" in line and "\n" not in line
    assert _epochs_saved(last) == 1 and not list(last.parent.glob(".*.part"))
    cfg = compose_cfg("train", [*TRAIN_TINY, "resume=true"], tmp_path)
    metrics = train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    assert metrics["train/epochs"] == 3


def test_a_full_cache_disk_is_one_line_naming_the_cache(tmp_path):
    """The data cache (data.cache_dir / SIGDET_CACHE_DIR) on a full disk (a real 8 KB tmpfs): one line naming the
    cache, not the run folder, exit 2, no Hydra "Error executing job" line (issue 40)."""
    import subprocess

    cache = tmp_path / "cache"
    cache.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(cache)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        # ultralytics' own metrics need the YOLO copy of the data: the write that fills the cache
        module, args = _evaluate(
            tmp_path, EMBEDDED, f"data.cache_dir={cache}", "evaluation.ultralytics_metrics=true"
        )
        r = run_module(module, *args, timeout=240)
        err = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
        assert err[0].startswith(f"error: {cache}") and "No space left on device" in err[0]
    finally:
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_transformers_checkpoint_survives_a_failed_save_and_resumes(tmp_path, monkeypatch):
    """The transformers backend's checkpoint folders are written beside and swapped in: epoch 2's save failing
    half-way (ENOSPC from torch.save's write) leaves epoch 1's weights/last whole, and resume=true finishes."""
    import errno

    import torch
    from omegaconf import open_dict

    from tests.conftest import HF_TINY, compose_cfg
    from training.backends import build_detector

    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY, "train.max_steps=null"], tmp_path)
    with open_dict(cfg):
        cfg.train.epochs = 3
    run_dir = Path(cfg.paths.run_dir)
    real, saves = torch.save, []

    def full_disk(obj, f, *a, **k):
        if Path(str(f)).parent.name == ".last.part":
            saves.append(f)
            if len(saves) == 2:
                Path(str(f)).write_bytes(b"torn")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as e:
        build_detector(cfg.model, run_dir).train(cfg)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and ".last.part" in str(e.value.filename)
    last = run_dir / "weights" / "last"
    state = torch.load(last / "trainer_state.pt", map_location="cpu", weights_only=False)
    assert state["fit"]["epoch"] == 1 and not (run_dir / "weights" / ".last.part").exists()
    with open_dict(cfg):
        cfg.resume = True
    assert build_detector(cfg.model, run_dir).train(cfg)["train/epochs"] == 3
