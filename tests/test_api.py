"""``import sigdet`` and the ``sigdet`` command: the same boxes as the CLI, page decisions at the model's stored
operating point, sharding, SIGKILL + ``resume=true``, and one line / exit 2 for each mistake."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sigdet
from tests.conftest import EMBEDDED, OFFLINE_ENV, ROOT
from training.data import asset_path

SYNTHETIC = Path(asset_path("pretrained")) / "yolov8n-synthetic.pt"
TEST_IMAGES = sorted((EMBEDDED / "test").glob("*.jpg"))


def sigdet_cli(*args: str, cwd: Path = ROOT, timeout: int = 300, wait: bool = True):
    cmd = [sys.executable, "-m", "sigdet", *args]
    env = OFFLINE_ENV | {"CI": "true"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "pages.jsonl").read_text().splitlines()]


def one_error_line(r: subprocess.CompletedProcess) -> str:
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), (
        r.returncode,
        r.stderr[-2000:],
    )
    return err[0]


def test_help_lists_the_commands_and_an_unknown_one_is_exit_2():
    r = sigdet_cli("--help")
    assert r.returncode == 0
    for name in ("train", "evaluate", "predict", "export", "benchmark", "sweep", "report"):
        assert f"\n  {name} " in r.stdout
    bad = sigdet_cli("pedict", "source=x")
    assert bad.returncode == 2 and "did you mean 'predict'" in bad.stderr and "commands:" in bad.stderr
    sub = sigdet_cli("predict", "--help")
    assert sub.returncode == 0 and "checkpoint" in sub.stdout
    # the groups predict composes (not every group of conf/: it has no model= slot), and its file's comments
    assert "\n  decode=default\n" in sub.stdout and "\n  model=" not in sub.stdout
    assert "# the operating confidence" in sub.stdout
    train = sigdet_cli("train", "--help")
    assert "\n  trainer@train=ultralytics\n" in train.stdout and "debug/detr" in train.stdout


def test_api_and_cli_give_the_same_boxes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for im in TEST_IMAGES[:4]:
        shutil.copy(im, src)
    r = sigdet_cli(
        "predict",
        f"checkpoint={SYNTHETIC}",
        f"source={src}",
        "conf=0.05",
        f"hydra.run.dir={tmp_path / 'cli'}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    cli = {Path(p["file"]).name: p for p in lines(tmp_path / "cli")}

    det = sigdet.load(SYNTHETIC, device="cpu", conf=0.05)
    api = det.predict(src)
    assert len(api) == len(cli) == 4
    for page in api:
        ref = cli[Path(page.file).name]
        assert page.page is None and (page.width, page.height) == (ref["width"], ref["height"])
        # the same path in another process: equal up to float32 rounding (a training earlier in this process
        # leaves torch with another thread count, which reorders the sums: 6e-5 px at 264 px, 2e-7 relative)
        np.testing.assert_allclose(page.boxes, np.array(ref["boxes"]).reshape(-1, 4), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(page.scores, ref["scores"], atol=1e-5)
        assert page.label_names == ref["labels"] and page.signed == ref["signed"]
    # a PIL image and an array give the file's boxes
    pil = det.predict(Image.open(api[0].file))[0]
    arr = det.predict([np.asarray(Image.open(api[0].file).convert("RGB"))])[0]
    for other in (pil, arr):
        assert other.file is None
        np.testing.assert_allclose(other.boxes, api[0].boxes, atol=1e-6)

    # sigdet.predict: the command's run folder, from Python
    run = sigdet.predict(src, checkpoint=SYNTHETIC, overrides=["conf=0.05"], run_dir=tmp_path / "py")
    ran = {Path(p["file"]).name: p["boxes"] for p in lines(run.dir)}
    assert set(ran) == set(cli)
    for name, boxes in ran.items():
        np.testing.assert_allclose(boxes, cli[name]["boxes"], rtol=1e-6, atol=1e-4)


def test_stored_operating_point_is_the_default(tmp_path):
    """A run folder's metrics.json operating point decides "signed" unless conf= is given; malformed is one line."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(SYNTHETIC, run / "weights" / "best.pt")
    op = {"conf": 0.3, "target_recall": 0.98, "chosen_on": "val", "reached": True}
    (run / "metrics.json").write_text(json.dumps({"metrics": {}, "operating_point": op}))
    det = sigdet.load(run, device="cpu")
    assert det.conf == 0.3 and "operating point" in det.conf_source
    assert all(p.scores.min() >= 0.3 for p in det.predict(TEST_IMAGES[:3]) if len(p.scores))
    assert sigdet.load(run, device="cpu", conf=0.5).conf == 0.5
    (run / "metrics.json").write_text(json.dumps({"metrics": {}, "operating_point": {"conf": "high"}}))
    with pytest.raises(sigdet.UserError, match="metrics.json: operating_point.conf"):
        sigdet.load(run, device="cpu")


def test_bad_inputs_are_one_line(tmp_path):
    img = str(TEST_IMAGES[0])
    for shard in ("2/2", "0/0", "a/b", "1"):
        r = sigdet_cli(
            "predict",
            f"checkpoint={SYNTHETIC}",
            f"source={img}",
            f"shard={shard}",
            f"hydra.run.dir={tmp_path / 's'}",
        )
        assert "shard=" in one_error_line(r)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    r = sigdet_cli("predict", f"checkpoint={plain}", f"source={img}", f"hydra.run.dir={tmp_path / 'p'}")
    assert "plain.pt" in one_error_line(r)
    if not torch.cuda.is_available():
        r = sigdet_cli(
            "predict",
            f"checkpoint={SYNTHETIC}",
            f"source={img}",
            "device=cuda",
            f"hydra.run.dir={tmp_path / 'c'}",
        )
        assert "no CUDA" in one_error_line(r)
    with pytest.raises(sigdet.UserError, match="not a path, a PIL image or an array"):
        sigdet.load(SYNTHETIC, device="cpu").predict([3])


def test_shards_split_the_files_deterministically(tmp_path):
    from evaluation.predict import in_shard

    files = [Path(f"/data/box{i // 50}/scan_{i}.pdf") for i in range(400)]
    owners = [[k for k in range(4) if in_shard(f, Path("/data"), (k, 4))] for f in files]
    assert all(len(o) == 1 for o in owners)  # every file in exactly one shard
    sizes = np.bincount([o[0] for o in owners])
    assert sizes.min() > 60  # and the shares are even enough
    # the same file under another root keeps its shard (the path below the root decides)
    assert in_shard(Path("/mnt/x/box1/scan_60.pdf"), Path("/mnt/x"), (owners[60][0], 4))

    src = tmp_path / "src"
    src.mkdir()
    for im in TEST_IMAGES[:6]:
        shutil.copy(im, src)
    seen = []
    for k in range(2):
        r = sigdet_cli(
            "predict",
            f"checkpoint={SYNTHETIC}",
            f"source={src}",
            f"shard={k}/2",
            f"hydra.run.dir={tmp_path / str(k)}",
        )
        if r.returncode == 2:  # a shard with no file is one line
            assert "nothing to predict" in r.stderr
            continue
        assert r.returncode == 0, r.stderr[-2000:]
        seen += [Path(p["file"]).name for p in lines(tmp_path / str(k))]
    assert sorted(seen) == sorted(p.name for p in TEST_IMAGES[:6])


def test_sigkill_and_resume_give_every_page_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(40):
        shutil.copy(TEST_IMAGES[k % len(TEST_IMAGES)], src / f"page_{k:03d}.jpg")
    run = tmp_path / "run"
    args = [f"checkpoint={SYNTHETIC}", f"source={src}", "batch=1", "prefetch=2", f"hydra.run.dir={run}"]
    proc = sigdet_cli("predict", *args, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "pages.jsonl").is_file() and len((run / "pages.jsonl").read_bytes().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(lines(run))
    assert 3 <= done < 40, done
    with open(run / "pages.jsonl", "a") as f:  # a line torn by the kill: dropped, its page redone
        f.write('{"file": "' + str(src / "page_039.jpg"))

    again = sigdet_cli("predict", *args)
    assert "already holds" in one_error_line(again) and "resume=true" in again.stderr
    r = sigdet_cli("predict", *args, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    files = [p["file"] for p in lines(run)]
    assert len(files) == len(set(files)) == 40
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["n_pages"] == 40
        and len(json.loads((run / "predictions.json").read_text())) == summary["n_detections"]
    )

    # resume=true on a run of another source is refused, nothing touched
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(TEST_IMAGES[0], other)
    before = (run / "pages.jsonl").read_bytes()
    (run / "predictions.json").unlink()  # past the finished-run guard: the source check must refuse it
    r = sigdet_cli(
        "predict", f"checkpoint={SYNTHETIC}", f"source={other}", f"hydra.run.dir={run}", "resume=true"
    )
    assert "another sources" in one_error_line(r)
    assert (run / "pages.jsonl").read_bytes() == before


def test_documents_and_pdf_points(tmp_path):
    """documents.csv: one row per file with its signed pages; PDF pages' boxes in points as well as pixels."""
    src = tmp_path / "src"
    src.mkdir()
    pages = [Image.open(p).convert("RGB") for p in TEST_IMAGES[:3]]
    pages[0].save(src / "contract.pdf", save_all=True, append_images=pages[1:], resolution=72)
    run = sigdet.predict(
        src, checkpoint=SYNTHETIC, overrides=["conf=0.1", "pdf.dpi=144"], run_dir=tmp_path / "run"
    )
    rows = lines(run.dir)
    assert [p["page"] for p in rows] == [1, 2, 3] and all(p["dpi"] == 144 for p in rows)
    for p in rows:
        np.testing.assert_allclose(
            np.array(p["boxes_pt"]).reshape(-1, 4) * 2, np.array(p["boxes"]).reshape(-1, 4)
        )
    doc = (run.dir / "documents.csv").read_text().splitlines()
    assert doc[0] == "file,pages,signed,signed_pages,boxes,best_score,unreadable" and len(doc) == 2
    signed = [str(p["page"]) for p in rows if p["signed"]]
    assert doc[1].split(",")[1:4] == ["3", "yes" if signed else "no", " ".join(signed)]


def test_the_shipped_model_is_the_default_and_finds_signed_real_pages():
    """No checkpoint: the real-page detector of the package, at its stored operating point; on the embedded test
    pages (real signatures-xc8up test pages, all signed, never seen in its training) it calls most of them signed.
    Its card, operating point and weights belong together."""
    import hashlib

    from evaluation.predict import shipped_checkpoint

    pt = shipped_checkpoint()
    side = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size <= 10 * 2**20 and side["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    card = pt.with_suffix(".md").read_text()
    assert "CC BY 4.0" in card and side["sha256"] in card and "python -m training" in card
    assert (ROOT / "docs" / "shipped-model.md").read_text() == card
    det = sigdet.load(device="cpu")
    assert det.checkpoint == pt and det.conf == side["operating_point"]["conf"]
    pages = det.predict(EMBEDDED / "test")
    assert len(pages) == 12 and sum(p.signed for p in pages) >= 10  # measured: 11 of 12


def test_review_cases_overrides_values_pixels_and_empty_shards(tmp_path):
    """checkpoint= in overrides is kept by load(); a transparent in-memory page is on white, as its file would be;
    a bad number is one line; a shard that holds no file writes empty tables and exits 0 (a job array of more
    jobs than files does not fail)."""
    det = sigdet.load(overrides=[f"checkpoint={SYNTHETIC}", "device=cpu"])
    assert det.checkpoint == SYNTHETIC
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent: a white page, not a black one
    assert det.pages_of([rgba])[0][0].image.min() == 255
    for bad in ("conf=abc", "batch=0", "pdf.dpi=0", "max_det=1.5"):
        with pytest.raises(sigdet.ConfigError, match=bad.split("=")[0]):
            sigdet.load(SYNTHETIC, device="cpu", overrides=[bad])
    with pytest.raises(sigdet.ConfigError, match="confidence"):
        sigdet.predict(TEST_IMAGES[0], checkpoint=SYNTHETIC, run_dir=tmp_path / "x", confidence=0.3)
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(TEST_IMAGES[0], src)
    owner = next(
        k
        for k in range(3)
        if __import__("evaluation.predict").predict.in_shard(src / TEST_IMAGES[0].name, src, (k, 3))
    )
    empty = (owner + 1) % 3
    r = sigdet_cli(
        "predict",
        f"checkpoint={SYNTHETIC}",
        f"source={src}",
        f"shard={empty}/3",
        f"hydra.run.dir={tmp_path / 'e'}",
    )
    assert r.returncode == 0 and "no file of this source" in r.stdout, r.stderr[-2000:]
    assert lines(tmp_path / "e") == [] and json.loads((tmp_path / "e" / "predictions.json").read_text()) == []


def test_second_review_cases_nothing_silent_nothing_overwritten(tmp_path):
    """What a new user hit (docs/api.md): det.predict never answers [] for files it could not read (it raises when
    none reads, warns naming the unreadable ones otherwise); a run folder holding a file a run writes is refused,
    untouched; a refused run leaves no half-written outputs; `resume=no`, imgsz=33, device=gpu and a password the
    command line read as a float are one line each; a password of digits is text; resume takes `big/` and
    `big` (and the shipped model named or not) for the same run."""
    from evaluation.predict import OUTPUTS

    det = sigdet.load(SYNTHETIC, device="cpu")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scan.png").write_bytes(b"not a png")
    with pytest.raises(sigdet.UserError, match="nothing could be read .*scan.png"):
        det.predict(bad)
    mixed = tmp_path / "mixed"
    shutil.copytree(bad, mixed)
    shutil.copy(TEST_IMAGES[0], mixed / "good.jpg")
    (mixed / "notes.txt").write_text("minutes")
    with pytest.warns(sigdet.SkippedFilesWarning, match="1 file\\(s\\) .*scan.png") as caught:
        assert [Path(p.file).name for p in det.predict(mixed)] == ["good.jpg"]
    assert not any("notes.txt" in str(w.message) for w in caught)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("keep: me\n")
    with pytest.raises(sigdet.UserError, match="already holds config.yaml"):
        sigdet.predict(TEST_IMAGES[0], checkpoint=SYNTHETIC, run_dir=mine)
    with pytest.raises(
        sigdet.UserError, match="already holds config.yaml"
    ):  # resume=true, no run to continue
        sigdet.predict(TEST_IMAGES[0], checkpoint=SYNTHETIC, overrides=["resume=true"], run_dir=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "keep: me\n"

    failed = tmp_path / "failed"
    with pytest.raises(sigdet.UserError, match="no page could be read|nothing to predict"):
        sigdet.predict(bad, checkpoint=SYNTHETIC, run_dir=failed)
    assert not any((failed / name).exists() for name in OUTPUTS)
    sigdet.predict(TEST_IMAGES[0], checkpoint=SYNTHETIC, run_dir=failed)  # the same folder takes the next run

    for override, said in [
        ("resume=no", "resume='no': expected true or false"),
        ("save.annotated=yes", "expected true or false"),
        ("imgsz=33", "multiple of 32"),
        ("pdf.password=1e3", "quote it"),
    ]:
        with pytest.raises(sigdet.ConfigError, match=said):
            sigdet.predict(TEST_IMAGES[0], checkpoint=SYNTHETIC, overrides=[override], run_dir=tmp_path / "v")
    from omegaconf import OmegaConf

    from evaluation.predict import _sources

    for nothing in ("", None, []):  # source=, source=null, source=[]
        with pytest.raises(sigdet.UserError, match="name an image, folder, glob or PDF"):
            _sources(OmegaConf.create({"source": nothing}))
    with pytest.raises(sigdet.UserError, match="device=gpu: not a device"):
        sigdet.load(SYNTHETIC, device="gpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(sigdet.UserError, match="device=mps: no mps device"):
            sigdet.load(SYNTHETIC, device="mps")

    pdf = tmp_path / "pdf"
    pdf.mkdir()
    Image.open(TEST_IMAGES[0]).convert("RGB").save(pdf / "doc.pdf")
    digits = sigdet.load(SYNTHETIC, device="cpu", overrides=["pdf.password=1234"])
    # digits reach PDFium as text (an int made it raise TypeError); opening an encrypted PDF with them is not tried
    assert len(digits.predict(pdf / "doc.pdf")) == 1

    big = tmp_path / "big"
    big.mkdir()
    for f in TEST_IMAGES[:2]:
        shutil.copy(f, big)
    run = sigdet.predict(f"{big}/", run_dir=tmp_path / "r")  # the shipped model, not named
    (run.dir / "predictions.json").unlink()  # as if killed before its last write
    shipped = Path(asset_path("pretrained")) / "signatures-yolov8n.pt"
    again = sigdet.predict(big, checkpoint=str(shipped), overrides=["resume=true"], run_dir=run.dir)
    assert again.metrics["n_pages"] == 2 and len(lines(run.dir)) == 2


def test_second_review_messages_name_the_real_problem(tmp_path):
    """A Lightning-style {'state_dict': ...} is not "a classifier checkpoint"; a run folder without best weights
    points at last.pt; a folder of images is "no model"; an empty array and a PIL image given to sigdet.predict
    (which writes a run folder of paths) are one line each."""
    lightning = tmp_path / "epoch=3.ckpt.pt"
    torch.save({"state_dict": {"model.backbone.weight": torch.zeros(2)}, "epoch": 3}, lightning)
    with pytest.raises(sigdet.UserError, match="not a checkpoint of any backend") as e:
        sigdet.load(lightning, device="cpu")
    assert "a classifier checkpoint" not in str(e.value)
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(SYNTHETIC, run / "weights" / "last.pt")
    with pytest.raises(sigdet.UserError, match="no model in it .*weights/last.pt is there"):
        sigdet.load(run, device="cpu")
    pages = tmp_path / "pages"
    pages.mkdir()
    shutil.copy(TEST_IMAGES[0], pages)
    with pytest.raises(sigdet.UserError, match="pages: a folder with no model in it"):
        sigdet.load(pages, device="cpu")
    det = sigdet.load(SYNTHETIC, device="cpu")
    with pytest.raises(sigdet.UserError, match="image 0: an empty image"):
        det.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(sigdet.UserError, match="sigdet.load\\(\\).predict"):
        sigdet.predict(Image.open(TEST_IMAGES[0]), checkpoint=SYNTHETIC, run_dir=tmp_path / "x")


def test_no_command_writes_into_the_run_of_another(tmp_path):
    """An export, an audit or an evaluation aimed at a training run's folder (or a training at an export's) is
    one line and exit 2, and the run's record (.hydra/overrides.yaml, which publish's model card reproduces) is
    untouched."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=quickstart\n")
    (run / "metrics.json").write_text("{}")
    for cmd in (
        ["export", f"checkpoint={SYNTHETIC}", "formats=[onnx]"],
        ["leakage", "data=embedded"],
        ["predict", f"checkpoint={SYNTHETIC}", f"source={TEST_IMAGES[0]}"],
    ):
        r = sigdet_cli(*cmd, f"hydra.run.dir={run}")
        assert "already holds" in one_error_line(r), cmd
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- experiment=quickstart\n"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "metrics.json", "weights"]
    export = tmp_path / "export"
    export.mkdir()
    (export / "sigdet_export.json").write_text("{}")
    r = sigdet_cli("evaluate", f"checkpoint={SYNTHETIC}", f"hydra.run.dir={export}")
    assert "already holds a run (sigdet_export.json)" in one_error_line(r)
    with pytest.raises(sigdet.UserError, match="already holds a run \\(sigdet_export.json\\)"):
        sigdet.train(["experiment=quickstart"], run_dir=export)


def test_values_a_schema_cannot_bound_are_one_line_before_any_work(tmp_path):
    """From a new user's review of train / evaluate / export: each of these was a deep traceback, a silent
    empty export or a table of zeros; each is now one line before anything is trained, loaded or written."""
    for overrides, said in [
        (["seed=abc"], "seed='abc': expected a whole number"),
        (["evaluation.splits=[]"], "name each split once"),
        (["evaluation.splits=[valid]"], "not a split of the data; its splits are"),
        (["evaluation.conf_fixed=2"], "expected a confidence in \\[0, 1\\]"),
        (["evaluation.n_bootstrap=-1"], "expected 0 \\(no intervals\\) or more"),
    ]:
        with pytest.raises(sigdet.UserError, match=said):
            sigdet.train(["experiment=quickstart", *overrides], run_dir=tmp_path / "t")
        assert not (tmp_path / "t").exists()
    if not torch.cuda.is_available():
        with pytest.raises(sigdet.UserError, match="train.device=0: no CUDA device"):
            sigdet.train(["experiment=quickstart", "train.device=0"], run_dir=tmp_path / "t")
    for overrides, said in [
        (["formats=[]"], "name at least one of"),
        (["imgsz=abc"], "imgsz='abc': expected a whole multiple of 32"),
        (["imgsz=100"], "imgsz=100: expected a whole multiple of 32"),
        (["opset=5"], "opset=5: expected a whole number in \\[11, "),
    ]:
        with pytest.raises(sigdet.UserError, match=said):
            sigdet.export(SYNTHETIC, ["formats=[onnx]", *overrides], run_dir=tmp_path / "e")  # the last wins
    # a run folder stands for its weights/best.pt, as for predict
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(SYNTHETIC, run / "weights" / "best.pt")
    ev = sigdet.evaluate(
        run, ["evaluation.splits=[val]", "evaluation.n_bootstrap=0"], run_dir=tmp_path / "ev"
    )
    assert "val/mAP50" in ev.metrics
