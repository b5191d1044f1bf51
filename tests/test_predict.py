"""``python -m evaluation.predict``: the evaluator's boxes on images, folders, globs and PDFs; bad sources skipped
with a count, or one line and exit 2 when nothing could be predicted; nothing written into the source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EMBEDDED, ROOT, compose_cfg, decode_table
from training.cli import UserError
from training.data import asset_path

PRETRAINED = Path(asset_path("pretrained")) / "yolov8n-synthetic.pt"
TEST_IMAGES = sorted((EMBEDDED / "test").glob("*.jpg"))


def pdf_bytes(encrypt: bool = False) -> bytes:
    """A one-page blank PDF; with ``encrypt``, one protected by the standard security handler (a user
    password is needed to open it)."""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
    ]
    if encrypt:
        objs.append(
            b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"
        )
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + o + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    enc = b" /Encrypt 4 0 R /ID [<" + b"ab" * 16 + b"> <" + b"ab" * 16 + b">]" if encrypt else b""
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R".encode() + enc + b" >>\n"
    return out + f"startxref\n{xref}\n%%EOF\n".encode()


def _pages(run_dir: Path) -> list[dict]:
    """pages.jsonl, one dict per page, in the order written (predictions.json's image ids count from 1 in it)."""
    return [json.loads(line) for line in (run_dir / "pages.jsonl").read_text().splitlines()]


def _predict(tmp_path: Path, checkpoint, source, *extra: str, sub: str = "run"):
    from evaluation.predict import predict_sources

    cfg = compose_cfg("predict", [f"checkpoint={checkpoint}", f"source={source}", *extra], tmp_path / sub)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True)
    return run_dir, predict_sources(cfg, run_dir)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    from export.run import export_checkpoint

    tmp = tmp_path_factory.mktemp("predict_onnx")
    cfg = compose_cfg(
        "export",
        [f"checkpoint={PRETRAINED}", "formats=[onnx]", "parity.n_images=2", "evaluation.n_bootstrap=0"],
        tmp,
    )
    manifest = export_checkpoint(cfg, tmp / "export")
    art = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    assert art["status"] == "passed", art
    return tmp / "export" / art["path"]


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_predict_gives_the_evaluators_boxes(tmp_path, kind, request):
    """Same boxes, scores and labels as the evaluator's predictions on the embedded test split."""
    from evaluation.evaluator import predict_split
    from evaluation.run import load_model
    from training.data import load_dataset

    checkpoint = PRETRAINED if kind == "pt" else request.getfixturevalue("onnx_export")
    split = load_dataset(compose_cfg("train", [], tmp_path).data, ["test"])["test"]
    model = load_model(checkpoint, "ultralytics", decode_table(), None, tmp_path)
    ours = predict_split(model, split, conf=0.001, imgsz=None, batch=4)

    run_dir, summary = _predict(tmp_path, checkpoint, EMBEDDED / "test", "conf=0.001", "batch=3")
    results = json.loads((run_dir / "predictions.json").read_text())
    assert summary["n_pages"] == len(split.images)
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["_annotations.coco.json"]
    by_file = {im.file.name: ours[im.id] for im in split.images}
    assert sum(len(d) for d in by_file.values()) == len(results) > 0
    for image_id, image in enumerate(_pages(run_dir), 1):
        mine = [r for r in results if r["image_id"] == image_id]
        ref = by_file[Path(image["file"]).name]
        assert len(mine) == len(ref) == image["n_boxes"]
        order = np.argsort(-ref.scores, kind="stable")
        got = np.array([[*r["bbox"], r["score"], r["category_id"]] for r in mine]).reshape(-1, 6)
        want = np.column_stack(
            [ref.boxes[:, :2], ref.boxes[:, 2:] - ref.boxes[:, :2], ref.scores, ref.labels]
        )
        g, w = got[np.argsort(-got[:, 4], kind="stable")], want[order]
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


def test_folders_globs_and_pdfs(tmp_path):
    """Recursive folder with a PDF of two pages, a text file, a corrupt and an encrypted PDF: pages numbered,
    bad files counted and listed, outputs in the run dir, the source untouched."""
    src = tmp_path / "scans"
    (src / "batch2").mkdir(parents=True)
    for im in TEST_IMAGES[:2]:
        shutil.copy(im, src)
    shutil.copy(TEST_IMAGES[2], src / "batch2" / TEST_IMAGES[0].name)  # same name, other folder
    pages = [Image.open(p).convert("RGB") for p in TEST_IMAGES[3:5]]
    pages[0].save(src / "contract.pdf", save_all=True, append_images=pages[1:], resolution=72)
    (src / "notes.txt").write_text("not a page")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    (src / "locked.pdf").write_bytes(pdf_bytes(encrypt=True))
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*")}

    run_dir, summary = _predict(
        tmp_path,
        PRETRAINED,
        src,
        "conf=0.1",
        "save.crops=true",
        "save.annotated=true",
        "pdf.dpi=72",
        "max_det=2",
    )
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*")} == before
    assert summary["n_pages"] == 5
    why = {Path(s["path"]).name: s["why"] for s in summary["skipped"]}
    assert set(why) == {"notes.txt", "broken.pdf", "locked.pdf"}
    assert "encrypted" in why["locked.pdf"] and "unreadable PDF" in why["broken.pdf"]
    pdf_pages = [im for im in _pages(run_dir) if im["file"].endswith("contract.pdf")]
    assert [im["page"] for im in pdf_pages] == [1, 2]
    assert (pdf_pages[0]["width"], pdf_pages[0]["height"]) == pages[0].size  # 72 dpi: one pixel per point
    assert all(im["boxes_pt"] == im["boxes"] for im in pdf_pages)  # ... so PDF points are the pixels
    results = json.loads((run_dir / "predictions.json").read_text())
    assert all(r["score"] >= 0.1 for r in results) and results, "the shipped detector finds signatures"
    assert max(im["n_boxes"] for im in _pages(run_dir)) <= 2
    assert all("page" in r for r in results if r["file_name"].endswith(".pdf"))
    names = sorted(p.name for p in (run_dir / "annotated").iterdir())
    assert (
        len(names) == 5
        and "contract_p0001.png" in names
        and "batch2__" + TEST_IMAGES[0].stem + ".png" in names
    )
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("file,page,image_id,class,score") and len(rows) == len(results) + 1
    assert len(list((run_dir / "crops" / "signature").glob("*.png"))) == len(results)
    # each page's line names its own annotated page and crops
    for im in _pages(run_dir):
        assert (run_dir / im["annotated"]).is_file() and len(im.get("crops", [])) == im["n_boxes"]
        assert all((run_dir / c).is_file() for c in im.get("crops", []))

    # a glob, and the password of an encrypted PDF passed through (a wrong one is still a counted skip)
    _, s2 = _predict(tmp_path, PRETRAINED, f"'{src}/**/*.jpg'", sub="glob")
    assert s2["n_pages"] == 3 and s2["skipped"] == []
    with pytest.raises(UserError, match="locked.pdf: encrypted PDF, wrong password"):
        _predict(tmp_path, PRETRAINED, src / "locked.pdf", "pdf.password=guess", sub="pw")


def test_nothing_to_predict_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    for source, msg in [
        (empty, "empty folder"),
        (tmp_path / "only", "nothing to predict"),
        (tmp_path / "missing.png", "no such file"),
        (f"'{tmp_path}/*.tif'", "matches no file"),
    ]:
        with pytest.raises(UserError, match=msg):
            _predict(tmp_path, PRETRAINED, source, sub=f"r{abs(hash(str(source)))}")


def test_cli_exit_codes(tmp_path):
    """Exit 2 with one line for a source that yields nothing; a run dir holding predictions is refused; `source=.`
    in the scans folder (the default run dir inside the source) is refused without leaving Hydra's folder there."""

    def run(*args, cwd=ROOT):
        env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "evaluation.predict", f"checkpoint={PRETRAINED}", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "locked.pdf").write_bytes(pdf_bytes(encrypt=True))
    bad = run(f"source={tmp_path / 'only'}", f"hydra.run.dir={tmp_path / 'r1'}")
    assert bad.returncode == 2, bad.stderr
    err = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "locked.pdf" in err[0] and "encrypted" in err[0], bad.stderr

    done = tmp_path / "done"
    done.mkdir()
    (done / "predictions.json").write_text("[]")
    again = run(f"source={TEST_IMAGES[0]}", f"hydra.run.dir={done}")
    assert again.returncode == 2 and "already holds predictions.json" in again.stderr
    assert (done / "predictions.json").read_text() == "[]"

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(TEST_IMAGES[0], scans / "page.jpg")
    here = run("source=.", cwd=scans)
    err = [line for line in here.stderr.splitlines() if line.strip()]
    assert here.returncode == 2 and len(err) == 1 and "inside source ." in err[0], here.stderr
    assert sorted(p.name for p in scans.iterdir()) == ["page.jpg"]
    (scans / "logs").mkdir()
    (scans / "logs" / "predict.log").write_text("mine")
    named = run("source=.", "hydra.run.dir=logs", cwd=scans)  # a folder the user named: refused, left alone
    assert named.returncode == 2 and "inside source ." in named.stderr, named.stderr
    assert (scans / "logs" / "predict.log").read_text() == "mine"  # Hydra wrote nothing there either
    assert sorted(p.name for p in (scans / "logs").iterdir()) == ["predict.log"]
    fresh = run(f"source={TEST_IMAGES[0]}", "resume=true", cwd=tmp_path)  # Hydra's new folder holds no run
    assert fresh.returncode == 2 and "resume=true continues the run in hydra.run.dir" in fresh.stderr, (
        fresh.stderr
    )


def test_progress_is_quiet_under_ci(monkeypatch):
    from training.progress import progress

    monkeypatch.setenv("CI", "true")
    assert progress(range(3)).disable
    monkeypatch.setenv("CI", "false")
    monkeypatch.delenv("SIGDET_PROGRESS", raising=False)
    assert not progress(range(3), desc="x").disable
    monkeypatch.setenv("SIGDET_PROGRESS", "0")
    assert progress(range(3)).disable


def test_class_names_from_the_model_never_leave_the_crops_folder(tmp_path):
    """A model's class names come with the file (its metadata): a name with separators or dots is one folder
    inside crops/, never a path elsewhere."""
    import torch
    import ultralytics.utils.patches as patches

    from training.compat.ultralytics import safe_load
    from training.fileio import folder_name

    assert [folder_name(n, "class_0") for n in ("signature", "../../x", "/abs", "..", "", "a\\b")] == [
        "signature",
        ".._.._x",
        "_abs",
        "class_0",
        "class_0",
        "a_b",
    ]
    with safe_load():
        ckpt = patches.torch_load(PRETRAINED, map_location="cpu")
    escape = tmp_path / "escaped"
    ckpt["model"].names = {0: f"../../{escape.name}"}
    doctored = tmp_path / "doctored.pt"
    torch.save(ckpt, doctored)
    run_dir, summary = _predict(tmp_path, doctored, TEST_IMAGES[0], "conf=0.1", "save.crops=true")
    assert _pages(run_dir)[0]["n_boxes"] > 0
    assert not escape.exists()
    (folder,) = (run_dir / "crops").iterdir()
    assert folder.name == f".._.._{escape.name}" and list(folder.glob("*.png"))


def test_half_precision_gives_the_same_boxes_and_exports_refuse_it(onnx_export):
    """half=true: FP16 weights and inputs (meant for GPUs; a CPU runs it too, which is what is checked here); the
    boxes of the shipped model stay within a pixel. An export keeps its own precision: half=true is one line."""
    import sigdet

    pages = TEST_IMAGES[:4]
    full = sigdet.load(device="cpu", conf=0.2).predict(pages)
    half = sigdet.load(device="cpu", conf=0.2, overrides=["half=true"]).predict(pages)
    assert sum(len(p.scores) for p in full) > 0
    for a, b in zip(full, half, strict=True):
        assert len(a.scores) == len(b.scores)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1.0)
        np.testing.assert_allclose(a.scores, b.scores, atol=0.01)
    with pytest.raises(UserError, match="half=true: .* is an export"):
        sigdet.load(onnx_export, overrides=["half=true"])


def test_links_loops_and_repeats_are_walked_once_and_listed(tmp_path):
    """A folder holding links back to itself (two loops), a broken link and a second link to a file: every page
    once, each link listed as skipped with its reason; the same through a ``**`` glob, which ends."""
    src = tmp_path / "scans"
    (src / "sub").mkdir(parents=True)
    shutil.copy(TEST_IMAGES[0], src / "a.jpg")
    shutil.copy(TEST_IMAGES[1], src / "sub" / "b.jpg")
    (src / "loop").symlink_to(src)
    (src / "sub" / "up").symlink_to(src)
    (src / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (src / "again.jpg").symlink_to(src / "a.jpg")
    for source, sub in ((src, "folder"), (f"'{src}/**/*.jpg'", "glob")):
        run_dir, summary = _predict(tmp_path, PRETRAINED, source, sub=sub)
        assert sorted(Path(p["file"]).name for p in _pages(run_dir)) == ["a.jpg", "b.jpg"], sub
        why = {Path(s["path"]).name: s["why"] for s in summary["skipped"]}
        assert "already walked" in why["loop"] and "already walked" in why["up"], why
        assert why["gone.jpg"] == "broken symbolic link" and "same file" in why["again.jpg"], why


def test_multi_page_tiffs_are_paged_and_avif_is_read(tmp_path):
    """A 3-page TIFF gives 3 pages numbered like a PDF's (no PDF points: it has no page size in points); an AVIF
    page and a HEIC phone photo are read (the suffixes are the datasets'); a dataset image of several pages is one line; a PDF of no pages
    is an unreadable PDF (never "PDFium: Success")."""
    from training.data.images import decode_rgb

    src = tmp_path / "src"
    src.mkdir()
    pages = [Image.open(p).convert("RGB") for p in TEST_IMAGES[:3]]
    pages[0].save(src / "fax.tif", save_all=True, append_images=pages[1:])
    pages[0].save(src / "photo.avif")
    shutil.copy(Path(__file__).parent / "data" / "rot6.heic", src / "phone.HEIC")
    run_dir, summary = _predict(tmp_path, PRETRAINED, src, "conf=0.1")
    rows = _pages(run_dir)
    tif = [p for p in rows if p["file"].endswith("fax.tif")]
    assert [p["page"] for p in tif] == [1, 2, 3] and all("boxes_pt" not in p for p in tif)
    assert [(p["width"], p["height"]) for p in tif] == [im.size for im in pages]
    assert any(p["file"].endswith("photo.avif") for p in rows) and summary["skipped"] == []
    assert [(p["width"], p["height"]) for p in rows if p["file"].endswith("phone.HEIC")] == [(64, 96)]
    with pytest.raises(UserError, match="multi-page image \\(3 pages\\)"):
        decode_rgb(src / "fax.tif")
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>"
        b"\nendobj\nxref\n0 3\n0000000000 65535 f \n0000000009 00000 n \n0000000058 00000 n \ntrailer\n"
        b"<< /Size 3 /Root 1 0 R >>\nstartxref\n110\n%%EOF\n"
    )
    # PDFium loads no document of 0 pages; its error code may be left from an earlier file, so only the kind is fixed
    with pytest.raises(UserError, match="empty.pdf: unreadable PDF"):
        _predict(tmp_path, PRETRAINED, empty, sub="empty")


def test_an_export_whose_manifest_lies_about_its_input_size_is_one_line(tmp_path, onnx_export):
    """imgsz edited in sigdet_export.json: one line naming the file and both sizes, in the API and the CLI."""
    import sigdet

    lying = tmp_path / "lying"
    shutil.copytree(onnx_export.parent, lying)
    meta = json.loads((lying / "sigdet_export.json").read_text())
    meta["imgsz"] = meta["imgsz"] + 96
    (lying / "sigdet_export.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"says imgsz {meta['imgsz']} .* but the graph's input is 1x3x"):
        sigdet.load(lying / onnx_export.name)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.predict",
            f"checkpoint={lying / onnx_export.name}",
            f"source={TEST_IMAGES[0]}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "true"},
        timeout=300,
    )
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(err) == 1 and "graph's input" in err[0], r.stderr[-2000:]


def test_documents_csv_answers_unknown_for_what_could_not_be_read(tmp_path):
    """A page never read is not "not signed": documents.csv gives a file none of whose pages read a row of its own,
    and a PDF with a page that did not read says which, with the answer "unknown" (unless a read page is signed);
    the summary counts them."""
    import csv

    src = tmp_path / "src"
    src.mkdir()
    page = Image.open(TEST_IMAGES[0]).convert("RGB")
    # page 1 small, page 2 four times its area: max_image_pixels between them skips page 2 only
    page.save(src / "two.pdf", save_all=True, append_images=[page.resize((page.width * 2, page.height * 2))])
    shutil.copy(TEST_IMAGES[1], src / "fine.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "notes.txt").write_text("not a page")
    limit = 3 * round(page.width * 150 / 72) * round(page.height * 150 / 72)  # PDF pages at 150 dpi
    run_dir, summary = _predict(tmp_path, PRETRAINED, src, "conf=0.99", f"max_image_pixels={limit}")
    with open(run_dir / "documents.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["broken.png", "fine.jpg", "two.pdf"]
    assert rows["fine.jpg"]["signed"] == "no" and rows["fine.jpg"]["unreadable"] == ""
    assert rows["two.pdf"]["pages"] == "1" and rows["two.pdf"]["signed"] == "unknown"
    assert (
        rows["two.pdf"]["unreadable"].startswith("page 2: ")
        and "max_image_pixels" in rows["two.pdf"]["unreadable"]
    )
    assert rows["broken.png"]["pages"] == "0" and rows["broken.png"]["signed"] == "unknown"
    assert summary["n_unknown_documents"] == 2 and summary["n_documents"] == 3  # the rows of documents.csv
