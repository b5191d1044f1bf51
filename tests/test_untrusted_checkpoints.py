"""Checkpoints from others never run code: a booby-trapped ``.pt`` leaves no marker, through every CLI and
path that loads one (evaluate, export, start-from weights, resume, classifier, transformers), and damaged or
foreign files are one line naming the file, exit code 2."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import HF_TINY, ROOT, TINY, compose_cfg
from training.cli import UserError


class _Payload:
    """Unpickling this runs ``fn(*args)``: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _touch_cmd(marker: Path) -> str:
    return f"touch {marker}"


def evil_checkpoints(d: Path, marker: Path) -> dict[str, Path]:
    """Booby-trapped files in the shapes a user might receive: an ultralytics-looking dict, a classifier-looking
    state dict, a legacy (non-zip) pickle, and a payload hidden beside real tensors."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    out["system"] = d / "evil_system.pt"
    torch.save({"model": _Payload(os.system, _touch_cmd(marker)), "epoch": 1}, out["system"])
    out["exec"] = d / "evil_exec.pt"
    torch.save(
        {"arch": "resnet18", "state_dict": _Payload(exec, f"open({str(marker)!r}, 'w').close()")}, out["exec"]
    )
    out["legacy"] = d / "evil_legacy.pt"
    torch.save(
        {"model": _Payload(os.system, _touch_cmd(marker))},
        out["legacy"],
        _use_new_zipfile_serialization=False,
    )
    out["hidden"] = d / "evil_hidden.pt"
    torch.save(
        {"fc.weight": torch.zeros(3, 512), "extra": _Payload(os.system, _touch_cmd(marker))}, out["hidden"]
    )
    return out


def damaged_checkpoints(d: Path, genuine: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = {"empty": d / "empty.pt", "text": d / "text.pt", "truncated": d / "truncated.pt"}
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is not a checkpoint\n")
    data = genuine.read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["pickle_junk"] = d / "junk.pt"
    out["pickle_junk"].write_bytes(pickle.dumps([1, 2, 3], protocol=2)[:5])
    return out


ENV = {**os.environ, "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV
    )


def _one_line_error(r: subprocess.CompletedProcess, name: str) -> None:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and name in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a checkpoint ran code while being loaded"


@pytest.mark.parametrize("cli", ["evaluation", "export"])
def test_booby_trapped_checkpoint_is_refused_by_the_clis(cli, tmp_path, marker):
    evil = evil_checkpoints(tmp_path / "in", marker)["system"]
    r = _cli(cli, f"checkpoint={evil}", f"hydra.run.dir={tmp_path / 'out'}")
    _one_line_error(r, evil.name)
    assert "posix.system" in r.stderr or "os.system" in r.stderr


def test_every_trap_is_refused_by_every_loader(tmp_path, marker):
    from training.backends import backend_of
    from training.backends.ultralytics import load_yolo
    from training.checkpoints import load_weights
    from training.classifier.model import load_classifier

    for name, evil in evil_checkpoints(tmp_path, marker).items():
        for load in (load_yolo, load_weights, load_classifier, backend_of):
            with pytest.raises(UserError) as e:
                load(evil)
            assert evil.name in str(e.value), (name, load.__name__, e.value)


def test_damaged_and_foreign_files_are_one_line(tmp_path, trained_run):
    from training.backends import backend_of
    from training.backends.ultralytics import load_yolo
    from training.classifier.model import load_classifier

    _, run_dir, _ = trained_run
    genuine = run_dir / "weights" / "best.pt"
    for name, bad in damaged_checkpoints(tmp_path, genuine).items():
        for load in (load_yolo, load_classifier, backend_of):
            with pytest.raises(UserError) as e:
                load(bad)
            assert bad.name in str(e.value) and "\n" not in str(e.value), (name, load.__name__)
    # a region-classifier state dict given to the detector: said as such, not "use an official model"
    clf = tmp_path / "clf.pt"
    torch.save({"arch": "resnet18", "classes": ["a"], "state_dict": {"fc.weight": torch.zeros(1, 512)}}, clf)
    with pytest.raises(UserError, match="region classifier"):
        load_yolo(clf)
    assert backend_of(clf) == "classifier"
    assert backend_of(genuine) == "ultralytics"


def test_genuine_checkpoint_still_loads_through_the_safe_path(trained_run):
    import ultralytics.nn.tasks as tasks

    from training.backends.ultralytics import load_yolo

    _, run_dir, _ = trained_run
    model = load_yolo(run_dir / "weights" / "best.pt")
    assert tasks.SAFE_LOAD is True and os.environ["ULTRALYTICS_SAFE_LOAD"] == "true"
    assert type(model.model).__name__ == "DetectionModel"


def test_training_from_booby_trapped_weights_is_refused(tmp_path, marker):
    from training.train import train

    evil = evil_checkpoints(tmp_path / "in", marker)["system"]
    cfg = compose_cfg("train", ["experiment=quickstart", *TINY, f"model.weights={evil}"], tmp_path)
    with pytest.raises(UserError, match=evil.name):
        train(cfg)


def test_resume_refuses_a_booby_trapped_checkpoint_in_the_run(tmp_path, trained_run, marker):
    """last.pt is loaded on resume; best.pt is re-read unrestricted by ultralytics' final evaluation, so a
    trapped best.pt beside a genuine last.pt is refused before training starts too."""
    from training.train import train

    _, run_dir, _ = trained_run
    evil = evil_checkpoints(tmp_path / "in", marker)["system"]
    for victim in ("last.pt", "best.pt"):
        rd = tmp_path / f"run_{victim}"
        (rd / "weights").mkdir(parents=True)
        for f in ("last.pt", "best.pt"):
            shutil.copy(run_dir / "weights" / f, rd / "weights" / f)
        shutil.copy(evil, rd / "weights" / victim)
        cfg = compose_cfg("train", ["experiment=quickstart", *TINY, "resume=true"], tmp_path)
        cfg.paths.run_dir = str(rd)
        with pytest.raises(UserError, match=victim):
            train(cfg)


def test_classifier_cli_refuses_a_booby_trapped_checkpoint(tmp_path, marker):
    evil = evil_checkpoints(tmp_path / "in", marker)["exec"]
    pages = tmp_path / "pages"
    pages.mkdir()
    r = _cli("training.classifier.infer", f"checkpoint={evil}", f"pages={pages}", f"out={tmp_path / 'res'}")
    _one_line_error(r, evil.name)


def test_transformers_run_folder_and_resume_state_never_unpickle_code(tmp_path, marker):
    from training.backends.transformers import STATE, TransformersDetector
    from training.train import train

    cfg = compose_cfg("train", ["model=debug/detr", *HF_TINY], tmp_path)
    train(cfg)
    run = Path(cfg.paths.run_dir)
    best = run / "weights" / "best"
    # a run folder whose weights are a trapped pickle instead of safetensors
    trapped = tmp_path / "trapped_folder"
    shutil.copytree(best, trapped)
    (trapped / "model.safetensors").unlink()
    torch.save({"w": _Payload(os.system, _touch_cmd(marker))}, trapped / "pytorch_model.bin")
    det = TransformersDetector(compose_cfg("train", ["model=debug/detr"]).model, tmp_path / "x")
    with pytest.raises(UserError, match="trapped_folder"):  # safetensors only: the pickle is never read
        det.load(trapped)
    # a sigdet.json whose entries have other types: one line naming it
    for change in ({"imgsz": "big"}, {"class_names": "signature"}, {"family": ["detr"]}, {"family": "rcnn"}):
        odd = tmp_path / "odd_meta"
        shutil.rmtree(odd, ignore_errors=True)
        shutil.copytree(best, odd)
        meta = json.loads((odd / "sigdet.json").read_text())
        (odd / "sigdet.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(UserError, match="sigdet.json"):
            det.load(odd)
    # a trapped trainer state on resume
    evil = evil_checkpoints(tmp_path / "in", marker)["system"]
    shutil.copy(evil, run / "weights" / "last" / STATE)
    (run / "metrics.json").unlink(missing_ok=True)
    cfg.resume = True
    with pytest.raises(UserError, match=STATE):
        train(cfg)


def test_resume_repairs_torn_checkpoints_of_its_own_run_but_never_trapped_ones(tmp_path, trained_run, marker):
    """A kill mid-save tears last.pt (ultralytics writes it in place): resume restores it from the atomic copy
    kept after each save; a torn best.pt is set aside; a trapped file is still refused."""
    from training.backends.ultralytics_training import LAST_COMPLETE, _vet_run_checkpoints

    _, run_dir, _ = trained_run
    w = tmp_path / "weights"
    w.mkdir()
    genuine = (run_dir / "weights" / "last.pt").read_bytes()
    (w / LAST_COMPLETE).write_bytes(genuine)
    (w / "last.pt").write_bytes(genuine[:1000])
    (w / "best.pt").write_bytes(b"")
    _vet_run_checkpoints(w)
    assert (w / "last.pt").read_bytes() == genuine
    assert not (w / "best.pt").exists() and (w / "best.pt.torn").exists()
    shutil.copy(evil_checkpoints(tmp_path / "in", marker)["system"], w / "best.pt")
    with pytest.raises(UserError, match="refused"):
        _vet_run_checkpoints(w)


def getattr_trap(path: Path, marker: Path) -> Path:
    """A zip checkpoint whose pickle names only ``builtins.getattr`` and an ultralytics model class, so the scan of
    globals lets it through, and walks ``DetectionModel.__init__.__globals__`` to ``eval``: harmless under
    ultralytics' restricted loader (its getattr stand-in), code under any unrestricted load."""
    import struct

    def s(text):
        b = text.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def get(obj, name):
        return b"h\x00" + obj + s(name) + b"\x86R"

    def call(fn, arg):
        return fn + arg + b"\x85R"

    cls = b"cultralytics.nn.tasks\nDetectionModel\n"
    builtins = call(get(get(get(cls, "__init__"), "__globals__"), "get"), s("__builtins__"))
    payload = b"\x80\x02cbuiltins\ngetattr\nq\x00" + call(
        call(get(builtins, "get"), s("eval")), s(f"open({str(marker)!r}, 'w').close()")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _zip_with_pickle(path, payload + b".")
    return path


def test_getattr_trap_passes_the_scan_but_never_runs(tmp_path, trained_run, marker):
    """ultralytics' own torch_load unpickles without restriction (strip_optimizer at the end of every training):
    under our safe load it goes through the restricted loader; resume's vetting trial-loads every checkpoint."""
    from training.backends.ultralytics import load_yolo
    from training.backends.ultralytics_training import _vet_run_checkpoints
    from training.checkpoints import check_ultralytics_checkpoint
    from training.compat.ultralytics import safe_load

    trap = getattr_trap(tmp_path / "w" / "best.pt", marker)
    assert check_ultralytics_checkpoint(trap) == trap  # the scan alone cannot tell
    from ultralytics.utils.torch_utils import strip_optimizer

    with safe_load():
        assert strip_optimizer(trap) == {}  # refused (ultralytics logs "Skipping"), not run
    with pytest.raises(UserError, match=trap.name):
        load_yolo(trap)
    shutil.copy(trained_run[1] / "weights" / "last.pt", trap.with_name("last.pt"))
    with pytest.raises(UserError, match="best.pt: refused"):
        _vet_run_checkpoints(trap.parent)
    # a genuine checkpoint still strips through the restricted loader
    genuine = shutil.copy(trained_run[1] / "weights" / "last.pt", tmp_path / "genuine.pt")
    with safe_load():
        assert "model" in strip_optimizer(genuine)


def test_resume_reads_this_runs_data_and_writes_into_its_folder(tmp_path, trained_run, marker):
    """ultralytics takes a resumed run's arguments from last.pt's train_args: a data YAML (whose `download:`
    script it runs when the images are missing) and a save_dir elsewhere. Resume uses ours instead."""
    import ultralytics.utils.patches as patches

    from training.compat.ultralytics import safe_load
    from training.train import train

    with safe_load():
        ckpt = patches.torch_load(trained_run[1] / "weights" / "last.pt", map_location="cpu")
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"path: {tmp_path / 'nowhere'}\ntrain: images\nval: images\nnames: {{0: signature}}\n"
        f"download: |\n  open({str(marker)!r}, 'w').close()\n"
    )
    elsewhere = tmp_path / "elsewhere"
    ckpt["train_args"].update(data=str(evil), save_dir=str(elsewhere), epochs=2)
    ckpt["epoch"] = 0  # an interrupted run
    rd = tmp_path / "run"
    (rd / "weights").mkdir(parents=True)
    torch.save(ckpt, rd / "weights" / "last.pt")
    cfg = compose_cfg("train", ["experiment=quickstart", *TINY, "resume=true"], tmp_path)
    cfg.paths.run_dir = str(rd)
    train(cfg)
    assert not elsewhere.exists()
    assert (rd / "weights" / "best.pt").is_file() and (rd / "results.csv").is_file()


def _zip_with_pickle(path: Path, data: bytes) -> Path:
    """A torch.save archive whose data.pkl is replaced by ``data`` (a malformed pickle stream)."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    src = zipfile.ZipFile(buf)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n in src.namelist():
            z.writestr(n, data if n.endswith("/data.pkl") else src.read(n))
    return path


def test_malformed_checkpoints_are_one_line(tmp_path):
    """Malformed pickle streams and classifier checkpoints whose entries have other types or shapes: one line
    naming the file (they were IndexError / ValueError / RuntimeError tracebacks)."""
    from training.checkpoints import load_weights
    from training.classifier.model import load_classifier

    bad = {
        "empty_stack": _zip_with_pickle(tmp_path / "empty_stack.pt", b"\x80\x02."),
        "bad_memo": _zip_with_pickle(tmp_path / "bad_memo.pt", b"\x80\x02h\x05."),
    }
    for name, content in {
        "classes_text": {"classes": "abc", "state_dict": {}},
        "imgsz_text": {"classes": ["a"], "imgsz": "big", "state_dict": {}},
        "state_dict_list": {"classes": ["a", "b", "c"], "state_dict": [[1]]},
        "fc_int": {"fc.weight": 1},
        "size_mismatch": {"fc.weight": torch.zeros(3, 512), "conv1.weight": torch.zeros(1)},
    }.items():
        torch.save(content, tmp_path / f"{name}.pt")
        bad[name] = tmp_path / f"{name}.pt"
    for name, path in bad.items():
        loaders = (
            (load_weights, load_classifier) if name in ("empty_stack", "bad_memo") else (load_classifier,)
        )
        for load in loaders:
            with pytest.raises(UserError) as e:
                load(path)
            assert path.name in str(e.value) and "\n" not in str(e.value), (name, load.__name__, e.value)
