"""Bad-input corpus (untrusted inputs): every bad dataset or sweep setting gives one clear line naming the file and
the entry (exit code 2 from the CLIs), ``data.strict=false`` skips and counts bad entries, the source is never
written, no file outside the dataset is opened, and nothing ends in a bare traceback.

Most cases run in-process (``load_dataset``); a few run the real CLIs for the exit code and the one stderr line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from tests.conftest import EMBEDDED, ROOT, TINY, compose_cfg, data_node
from training.cli import ConfigError, DataError, UserError
from training.data import load_dataset
from training.data.coco import read_coco, write_coco
from training.data.issues import IssueLog
from training.data.yolo import read_yolo

ANN = "_annotations.coco.json"
N_IMAGES = 3  # images in the mini datasets: enough for "the other images still load"
# longer is not a message a person reads: values quoted from the input must be shortened (reprlib)
MAX_MESSAGE = 1000


# -- helpers -------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (symlinks: their target, not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def data_cfg(cache: Path, **kw) -> DictConfig:
    base = {"name": "bad", "splits": {"train": "train"}, "strict": True, "cache_dir": str(cache)}
    base.update(kw)
    return data_node(base)


def assert_one_line(text: str, *needles: str) -> None:
    assert "\n" not in text and "Traceback" not in text, text
    assert len(text) < MAX_MESSAGE, text[:MAX_MESSAGE]
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # shared by the module: image checks are keyed by content, so reusing them across cases is safe and fast
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every path PIL is asked to open during the test."""
    seen: list[Path] = []
    real_open = PIL.Image.open

    def spy(fp, *a, **k):
        if isinstance(fp, (str, os.PathLike)):
            seen.append(Path(fp).resolve())
        return real_open(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return seen


# -- COCO ----------------------------------------------------------------------------------------------
@pytest.fixture
def mini_coco(tmp_path) -> Path:
    """``<tmp>/coco/train``: the first images of the embedded train split with their boxes."""
    root = tmp_path / "coco"
    (root / "train").mkdir(parents=True)
    doc = json.loads((EMBEDDED / "train" / ANN).read_text(encoding="utf-8"))
    doc["images"] = doc["images"][:N_IMAGES]
    ids = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    for im in doc["images"]:
        shutil.copy(EMBEDDED / "train" / im["file_name"], root / "train" / im["file_name"])
    (root / "train" / ANN).write_text(json.dumps(doc), encoding="utf-8")
    return root


@dataclass(frozen=True)
class Case:
    """One bad input: ``corrupt(root, doc)`` edits the parsed annotation file (or the folder) and may return raw
    bytes to write instead of the edited JSON."""

    corrupt: Callable[[Path, dict], bytes | None]
    entry: str | None  # the entry the message names; None: the whole file is unusable
    message: str
    kind: str | None  # what data.strict=false counts; None: an error in lenient mode too


def _file_name(name: str) -> Callable[[Path, dict], None]:
    return lambda root, doc: doc["images"][0].update(file_name=name)


def _symlinked_file(root: Path, doc: dict) -> None:
    # a real image, but outside the dataset: a private photo would otherwise be trained on / copied by convert
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copy(root / "train" / doc["images"][0]["file_name"], outside / "private.jpg")
    (root / "train" / "linked.jpg").symlink_to(outside / "private.jpg")
    doc["images"][0]["file_name"] = "linked.jpg"


def _sibling_image(root: Path, doc: dict) -> None:
    (root / "other").mkdir()
    shutil.copy(root / "train" / doc["images"][0]["file_name"], root / "other" / "real.jpg")
    doc["images"][0]["file_name"] = "../other/real.jpg"


def _symlinked_dir(root: Path, doc: dict) -> None:
    (root / "train" / "up").symlink_to("/")
    doc["images"][0]["file_name"] = "up/etc/passwd"


def _latin1(root: Path, doc: dict) -> bytes:
    doc["images"][0]["file_name"] = "café.jpg"
    return json.dumps(doc, ensure_ascii=False).encode("latin-1")


def _too_many_digits(root: Path, doc: dict) -> bytes:
    doc["images"][0]["id"] = 123456789
    return json.dumps(doc).replace("123456789", "9" * 5000).encode()


def _set_bbox(value: object) -> Callable[[Path, dict], None]:
    return lambda root, doc: doc["annotations"][0].update(bbox=value)


COCO_CASES = {
    "dotdot": Case(
        _file_name("../../../../../../../../etc/passwd"), "images[0]", "points outside", "unsafe_path"
    ),
    # a real image, in a folder beside the split's: still not the split's to use
    "dotdot_sibling": Case(_sibling_image, "images[0]", "points outside", "unsafe_path"),
    "absolute": Case(_file_name("/etc/passwd"), "images[0]", "absolute path", "unsafe_path"),
    "symlinked_file": Case(_symlinked_file, "images[0]", "symlink", "unsafe_path"),
    "symlinked_dir": Case(_symlinked_dir, "images[0]", "symlink", "unsafe_path"),
    "newline_in_name": Case(_file_name("a\nb.jpg"), "images[0]", "control character", "malformed"),
    "latin1_json": Case(_latin1, None, "not UTF-8 text (byte 0xe9 at offset", None),
    "utf16_json": Case(lambda root, doc: json.dumps(doc).encode("utf-16"), None, "UTF-16", None),
    "utf16_no_bom": Case(lambda root, doc: json.dumps(doc).encode("utf-16-le"), None, "byte 0x00", None),
    "too_many_digits": Case(_too_many_digits, None, "malformed JSON (Exceeds the limit", None),
    "deep_nesting": Case(lambda root, doc: b"[" * 100_000, None, "nested too deeply", None),
    "huge_int_id": Case(
        lambda root, doc: doc["images"][0].update(id=10**400), "images[0]", "malformed", "malformed"
    ),
    "huge_int_box": Case(_set_bbox([10**400, 0, 1, 1]), "annotations[0]", "malformed", "malformed"),
    "long_garbage_box": Case(_set_bbox("x" * 100_000), "annotations[0]", "is not [x, y, w, h]", "malformed"),
}


def _apply(root: Path, case: Case) -> Path:
    path = root / "train" / ANN
    doc = json.loads(path.read_text(encoding="utf-8"))
    raw = case.corrupt(root, doc)
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return path


@pytest.mark.parametrize("name", sorted(COCO_CASES))
def test_coco_bad_input_is_one_line_naming_file_and_entry(name, mini_coco, cache, opened):
    case = COCO_CASES[name]
    path = _apply(mini_coco, case)
    before = snapshot(mini_coco.parent)
    with pytest.raises(DataError) as e:
        load_dataset(data_cfg(cache, format="coco", root=str(mini_coco)), ("train",))
    assert_one_line(str(e.value), str(path), case.message, *([case.entry] if case.entry else []))
    assert snapshot(mini_coco.parent) == before
    root = (mini_coco / "train").resolve()
    assert all(p.is_relative_to(root) for p in opened), opened


@pytest.mark.parametrize("name", sorted(COCO_CASES))
def test_coco_bad_input_lenient_skips_and_counts(name, mini_coco, cache, opened):
    case = COCO_CASES[name]
    _apply(mini_coco, case)
    cfg = data_cfg(cache, format="coco", root=str(mini_coco), strict=False)
    if case.kind is None:  # nothing of a file that cannot be parsed is usable
        with pytest.raises(DataError, match=ANN):
            load_dataset(cfg, ("train",))
        return
    ds = load_dataset(cfg, ("train",))
    # the counts are keyed by kind (or split/kind): either way the kind is counted
    assert any(k.split("/")[-1] == case.kind and n >= 1 for k, n in ds.skipped.items()), ds.skipped
    assert ds["train"].images
    root = (mini_coco / "train").resolve()
    assert all(im.file.resolve().is_relative_to(root) for im in ds["train"].images)
    assert all(p.is_relative_to(root) for p in opened), opened


def test_coco_utf8_bom_is_accepted(mini_coco, cache):
    path = mini_coco / "train" / ANN
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert (
        len(load_dataset(data_cfg(cache, format="coco", root=str(mini_coco)), ("train",))["train"].images)
        == N_IMAGES
    )


def test_coco_dotdot_that_stays_inside_is_fine(mini_coco, cache):
    path = mini_coco / "train" / ANN
    doc = json.loads(path.read_text(encoding="utf-8"))
    (mini_coco / "train" / "sub").mkdir()
    doc["images"][0]["file_name"] = "sub/../" + doc["images"][0]["file_name"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert (
        len(load_dataset(data_cfg(cache, format="coco", root=str(mini_coco)), ("train",))["train"].images)
        == N_IMAGES
    )


def test_coco_absolute_file_names_need_the_explicit_opt_in(mini_coco, tmp_path):
    """``write_coco(file_names="absolute")`` output is read back only by a caller that says it wrote it."""
    split = read_coco(mini_coco / "train" / ANN, "train", IssueLog())
    elsewhere = write_coco(split, tmp_path / "elsewhere" / ANN, file_names="absolute")
    with pytest.raises(DataError, match="absolute path"):
        read_coco(elsewhere, "train", IssueLog())
    back = read_coco(elsewhere, "train", IssueLog(), allow_outside=True)
    assert [im.file for im in back.images] == [im.file for im in split.images]
    assert back.annotations == split.annotations  # origin differs, and is not part of equality


def test_coco_entries_carry_their_origin(mini_coco):
    path = mini_coco / "train" / ANN
    split = read_coco(path, "train", IssueLog())
    assert str(split.images[1].origin).startswith(f"{path}: images[1] (image id ")
    a = split.annotations[0]
    assert str(a.origin) == f"{path}: annotations[0] (annotation id {a.id}, image id {a.image_id})"


# -- YOLO ----------------------------------------------------------------------------------------------
LABEL = "0 0.5 0.5 0.2 0.1\n"


def _make_yolo(tmp_path: Path) -> Path:
    """``<tmp>/yolo/{data.yaml, images/train, labels/train}`` with one box per image; returns data.yaml."""
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for f in sorted((EMBEDDED / "train").glob("*.jpg"))[:N_IMAGES]:
        shutil.copy(f, root / "images" / "train" / f.name)
        (root / "labels" / "train" / f"{f.stem}.txt").write_text(LABEL, encoding="utf-8")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"train": "images/train", "names": ["signature"]}), encoding="utf-8")
    return data_yaml


@pytest.fixture
def mini_yolo(tmp_path) -> Path:
    return _make_yolo(tmp_path)


def first_label(data_yaml: Path) -> Path:
    return sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))[0]


@dataclass(frozen=True)
class YoloCase:
    """``content`` replaces the first label file (``target="label"``) or data.yaml (``target="yaml"``)."""

    target: str
    content: bytes
    needles: tuple[str, ...]  # besides the file's path
    kind: str | None  # what data.strict=false counts; None: an error in lenient mode too


YOLO_CASES = {
    "label_not_utf8": YoloCase(
        "label",
        LABEL.encode() + b"0 0.5 0.5 0.2 \xff0.1\n",
        ("label file", "byte 0xff", "line 2"),
        "encoding",
    ),
    "label_utf16": YoloCase("label", LABEL.encode("utf-16"), ("label file", "UTF-16"), "encoding"),
    "label_nan": YoloCase("label", b"0 nan 0.5 0.2 0.1\n", ("line 1", "cx 'nan' is not finite"), "malformed"),
    "label_inf_size": YoloCase(
        "label", b"0 0.5 0.5 inf 0.1\n", ("line 1", "w 'inf' is not finite"), "malformed"
    ),
    "label_zero_size": YoloCase("label", b"0 0.5 0.5 0 0.1\n", ("line 1", "not positive"), "malformed"),
    "label_class_range": YoloCase(
        "label", b"3 0.5 0.5 0.2 0.1\n", ("line 1", "class '3' not in 0..0"), "malformed"
    ),
    "label_class_float": YoloCase(
        "label", b"0.0 0.5 0.5 0.2 0.1\n", ("line 1", "is not an integer"), "malformed"
    ),
    "label_fields": YoloCase("label", b"0 0.5 0.5 0.2\n", ("line 1", "got 4 fields"), "malformed"),
    # \x0b and \x1c end a line for str.splitlines but not for an editor: the bad value is on line 3
    "label_line_numbers": YoloCase(
        "label",
        LABEL.encode() + b"\n0 0.5\x0b 0.5 0.2 \x1cz\n",
        ("line 3", "h 'z' is not a number"),
        "malformed",
    ),
    "label_long_garbage": YoloCase(
        "label", b"0 " + b"9" * 100_000 + b" 0.5 0.2 0.1\n", ("line 1",), "malformed"
    ),
    "yaml_not_utf8": YoloCase(
        "yaml",
        b"train: images/train\nnames: [caf\xe9]\n",
        ("not UTF-8 text (byte 0xe9 at offset", "line 2"),
        None,
    ),
    "yaml_train_list": YoloCase(
        "yaml", b"train: [images/train]\nnames: [signature]\n", ("'train' must be one folder path",), None
    ),
    "yaml_names_keys": YoloCase(
        "yaml", b"train: images/train\nnames: {1: signature}\n", ("class indices",), None
    ),
    "yaml_names_nested": YoloCase(
        "yaml", b"train: images/train\nnames: [[a, b]]\n", ("'names' entries must be plain names",), None
    ),
    "yaml_train_is_a_file": YoloCase("yaml", b"train: data.yaml\nnames: [signature]\n", ("not found",), None),
    "yaml_malformed": YoloCase("yaml", b"names: [a\ntrain: :\n", ("malformed YAML",), None),
    "yaml_python_tag": YoloCase(
        "yaml", b"names: !!python/object/apply:os.system ['echo pwned']\n", ("malformed YAML",), None
    ),
    "yaml_deep_nesting": YoloCase("yaml", b"[" * 100_000, ("nested too deeply",), None),
}


def _apply_yolo(data_yaml: Path, case: YoloCase) -> Path:
    target = first_label(data_yaml) if case.target == "label" else data_yaml
    target.write_bytes(case.content)
    return target


@pytest.mark.parametrize("name", sorted(YOLO_CASES))
def test_yolo_bad_input_is_one_line_naming_file_and_line(name, mini_yolo, cache):
    case = YOLO_CASES[name]
    target = _apply_yolo(mini_yolo, case)
    before = snapshot(mini_yolo.parent)
    with pytest.raises(DataError) as e:
        load_dataset(data_cfg(cache, format="yolo", yaml=str(mini_yolo)), ("train",))
    assert_one_line(str(e.value), str(target), *case.needles)
    assert snapshot(mini_yolo.parent) == before


@pytest.mark.parametrize("name", sorted(YOLO_CASES))
def test_yolo_bad_input_lenient_skips_and_counts(name, mini_yolo, cache):
    case = YOLO_CASES[name]
    _apply_yolo(mini_yolo, case)
    cfg = data_cfg(cache, format="yolo", yaml=str(mini_yolo), strict=False)
    if case.kind is None:
        with pytest.raises(DataError, match="data.yaml"):
            load_dataset(cfg, ("train",))
        return
    ds = load_dataset(cfg, ("train",))
    assert any(k.split("/")[-1] == case.kind and n >= 1 for k, n in ds.skipped.items()), ds.skipped
    # an unreadable label file drops its image too: its boxes are unknown, it is not a page without signatures
    assert len(ds["train"].images) == (N_IMAGES - 1 if case.kind == "encoding" else N_IMAGES)


def test_yolo_annotations_carry_label_file_and_line(mini_yolo):
    lab = first_label(mini_yolo)
    lab.write_text(LABEL + "\n" + LABEL, encoding="utf-8")
    split = read_yolo(mini_yolo, "train", "train", IssueLog())
    mine = [a for a in split.annotations if a.origin and a.origin.file == str(lab)]
    assert [a.origin.entry for a in mine] == ["line 1", "line 3"]


def test_yolo_box_outside_image_names_label_file_and_line(mini_yolo, cache):
    lab = first_label(mini_yolo)
    lab.write_text(LABEL + "0 0.95 0.5 0.5 0.1\n", encoding="utf-8")  # reaches 1.2 x the width
    with pytest.raises(DataError) as e:
        load_dataset(data_cfg(cache, format="yolo", yaml=str(mini_yolo)), ("train",))
    assert_one_line(str(e.value), str(lab), "line 2", "outside")


_TOKENS = st.one_of(
    st.sampled_from(
        ["0", "1", "-1", "0.5", "1e9", "nan", "-inf", "Infinity", "1_0", "٣", "0x1", "+.5", "1e-400"]
    ),
    st.floats().map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=6),
)
_LINES = st.one_of(st.lists(_TOKENS, max_size=7).map(" ".join), st.text(max_size=30))
_BODIES = st.one_of(
    # surrogatepass: lone surrogates become bytes that are not UTF-8, another kind of garbage
    st.lists(_LINES, max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
)


@pytest.fixture(scope="module")
def garbage_yolo(tmp_path_factory) -> Path:
    # module scope: hypothesis runs every example in the same test call
    return _make_yolo(tmp_path_factory.mktemp("garbage"))


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_BODIES)
@example(body=b"0 0.5 0.5 0.2 0.1\r\n0 0.5 0.5 0.2 0.1")  # CRLF, no final newline
@example(body=b"\xef\xbb\xbf0 0.5 0.5 0.2 0.1\n")  # UTF-8 byte-order mark
@example(body=b"0 0.5 0.5 0.2 0.1\n\x00\n")
@example(body="0 0.5 0.5 0.2 0.1\u2028x\n".encode())  # a line separator for str.splitlines only
def test_garbage_label_lines_are_named_or_counted(body, garbage_yolo, cache):
    """Whatever a label file holds: strict reading either succeeds or names the label file and the line; lenient
    reading accounts for every non-blank line (a box or a counted issue); never another exception."""
    lab = first_label(garbage_yolo)
    lab.write_bytes(body)
    try:
        text = body.decode("utf-8-sig")
        lines = [ln for ln in text.split("\n") if ln.strip()] if "\x00" not in text else None
    except UnicodeDecodeError:
        lines = None  # not text: the whole file is one issue
    try:
        read_yolo(garbage_yolo, "train", "train", IssueLog(strict=True))
    except DataError as e:
        assert_one_line(str(e), str(lab))
        assert "line " in str(e) or "label file" in str(e)
    issues = IssueLog(strict=False)
    split = read_yolo(garbage_yolo, "train", "train", issues)
    assert all(i.file == str(lab) for i in issues.issues)
    mine = [a for a in split.annotations if a.origin.file == str(lab)]
    if lines is None:
        assert [i.kind for i in issues.issues] == ["encoding"] and not mine
        assert len(split.images) == N_IMAGES - 1
    else:
        assert len(mine) + len(issues.issues) == len(lines)
        assert all(i.entry.startswith("line ") for i in issues.issues)
    for a in split.annotations:
        assert a.bbox[2] > 0 and a.bbox[3] > 0
    for strict in (True, False):  # through validation too: a clear error or a loaded split
        try:
            ds = load_dataset(
                data_cfg(cache, format="yolo", yaml=str(garbage_yolo), strict=strict), ("train",)
            )
        except DataError as e:
            assert strict, e
            assert_one_line(str(e))
        else:
            assert ds["train"].images


# -- the CLIs: exit code 2, one stderr line, the source untouched --------------------------------------
def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_cli_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert_one_line(lines[0], *needles)


@pytest.mark.parametrize("to", ["yolo", "coco"])
def test_convert_cli_refuses_unsafe_file_name(to, embedded_copy, tmp_path):
    path = _apply(embedded_copy, COCO_CASES["dotdot"])
    before = snapshot(embedded_copy)
    out = tmp_path / "out"
    r = run_cli(
        [
            "training.data.convert",
            "data=coco_folder",
            f"data.root={embedded_copy}",
            f"to={to}",
            f"out={out}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert_cli_error(r, str(path), "images[0]", "points outside")
    assert snapshot(embedded_copy) == before
    assert not out.exists() and not list(tmp_path.glob("out.tmp*"))


def test_convert_cli_names_non_utf8_annotation_file(embedded_copy, tmp_path):
    path = _apply(embedded_copy, COCO_CASES["latin1_json"])
    before = snapshot(embedded_copy)
    r = run_cli(
        [
            "training.data.convert",
            "data=coco_folder",
            f"data.root={embedded_copy}",
            "to=yolo",
            f"out={tmp_path / 'out'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert_cli_error(r, str(path), "not UTF-8 text (byte 0xe9")
    assert snapshot(embedded_copy) == before


def test_convert_cli_names_yolo_label_file_and_line(mini_yolo, tmp_path):
    lab = _apply_yolo(mini_yolo, YOLO_CASES["label_line_numbers"])
    before = snapshot(mini_yolo.parent)
    r = run_cli(
        [
            "training.data.convert",
            "data=yolo_folder",
            f"data.yaml={mini_yolo}",
            "splits=[train]",
            "to=coco",
            f"out={tmp_path / 'out'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert_cli_error(r, str(lab), "line 3")
    assert snapshot(mini_yolo.parent) == before


def test_train_cli_bad_data_leaves_source_and_finished_run_alone(embedded_copy, tmp_path):
    """A bad dataset: exit 2 naming the file and entry, the source unchanged; pointed at a finished run, the run
    is refused and not one of its files changes."""
    path = _apply(embedded_copy, COCO_CASES["symlinked_file"])
    before = snapshot(embedded_copy), snapshot(tmp_path / "outside")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text('{"metrics": {"val/f1": 0.5}}')
    (finished / "config.yaml").write_text("seed: 1\n")
    run_before = snapshot(finished)
    base = [
        "training",
        "experiment=quickstart",
        *TINY,
        "data=coco_folder",
        f"data.root={embedded_copy}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    r = run_cli([*base, f"hydra.run.dir={tmp_path / 'run'}"], ROOT)
    assert_cli_error(r, str(path), "images[0]", "symlink")
    r = run_cli([*base, f"hydra.run.dir={finished}"], ROOT)
    assert_cli_error(r, str(finished), "finished run")
    assert snapshot(finished) == run_before
    assert (snapshot(embedded_copy), snapshot(tmp_path / "outside")) == before


# -- sweep settings ------------------------------------------------------------------------------------
def sweep_cfg(*overrides: str) -> DictConfig:
    return compose_cfg("sweep", ["sweep=quickstart_tiny", *overrides]).sweep


@pytest.mark.parametrize("value", ["2.5", "ten", "null", "true"])
def test_sweep_n_trials_of_another_type_is_refused_by_its_schema(value, tmp_path):
    """Not an integer: the sweep schema (training/config.py) refuses it while Hydra composes, and the CLI prints
    that as one line naming the key."""
    from hydra.errors import ConfigCompositionException

    from training.cli import config_error_line

    with pytest.raises(ConfigCompositionException) as e:
        sweep_cfg(f"sweep.n_trials={value}")
    assert_one_line(config_error_line(e.value), "sweep.n_trials")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_sweep_n_trials_must_be_a_positive_integer(value, tmp_path):
    from training.sweep import optimize

    scfg = sweep_cfg(f"sweep.n_trials={value}", f"sweep.storage=sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigError) as e:
        optimize(scfg, tmp_path / "out", lambda cfg, wrap: pytest.fail("a trial ran"))
    assert_one_line(str(e.value), "sweep.n_trials=")
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal://"])
def test_sweep_storage_folder_is_created_only_in_the_sweep_dir(scheme, tmp_path, monkeypatch):
    from training.sweep import make_storage

    monkeypatch.delenv("SIGDET_STORAGE", raising=False)
    out_dir = tmp_path / "sweep"
    missing = tmp_path / "typo" / "deeper"
    with pytest.raises(ConfigError) as e:
        make_storage(f"{scheme}{missing}/study.db", out_dir)
    assert_one_line(str(e.value), "sweep.storage", str(missing), "does not exist")
    assert not (tmp_path / "typo").exists()
    monkeypatch.setenv("SIGDET_STORAGE", f"{scheme}{missing}/study.db")
    with pytest.raises(ConfigError, match=r"^\$SIGDET_STORAGE: folder"):
        make_storage("ignored", out_dir)
    monkeypatch.delenv("SIGDET_STORAGE")
    assert make_storage(f"{scheme}{out_dir}/db/study.db", out_dir) is not None  # the sweep's own dir
    assert (out_dir / "db").is_dir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        make_storage(f"{scheme}{tmp_path}/a_file/study.db", out_dir)


def test_sweep_storage_that_is_not_a_database(tmp_path, monkeypatch):
    from training.sweep import make_storage

    monkeypatch.delenv("SIGDET_STORAGE", raising=False)
    (tmp_path / "study.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError) as e:
        make_storage(f"sqlite:///{tmp_path}/study.db", tmp_path)
    assert_one_line(str(e.value), "sweep.storage", "study.db")


def test_sweep_cli_rejects_n_trials_before_anything_runs(tmp_path):
    r = run_cli(
        ["training.sweep", "sweep=quickstart_tiny", "sweep.n_trials=0", f"paths.output_dir={tmp_path}"], ROOT
    )
    assert_cli_error(r, "sweep.n_trials=0")
    out = tmp_path / "sweeps" / "quickstart_tiny"
    assert not (out / "study.db").exists() and not (out / "trials").exists()


def test_sweep_summary_without_a_study_is_one_line(tmp_path, monkeypatch):
    from evaluation.sweep_report import summarize

    monkeypatch.delenv("SIGDET_STORAGE", raising=False)
    scfg = sweep_cfg(f"sweep.storage=sqlite:///{tmp_path}/s.db")
    with pytest.raises(UserError) as e:
        summarize(scfg, tmp_path)
    assert_one_line(str(e.value), "quickstart_tiny", "mode=optimize")


def test_architecture_yaml_ultralytics_cannot_build_is_one_line(tmp_path):
    """A model YAML of one's own or from others: a refused activation, a wrong shape, a missing file are one
    line naming model.arch (they were tracebacks)."""
    from training.train import train

    refused = tmp_path / "refused.yaml"
    refused.write_text(
        'nc: 1\nactivation: os.system("touch x")\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n'
        "head:\n  - [[0], 1, Detect, [nc]]\n"
    )
    shape = tmp_path / "shape.yaml"
    shape.write_text("nc: 1\nbackbone: 5\nhead: []\n")
    for arch in (refused, shape, tmp_path / "missing.yaml"):
        cfg = compose_cfg(
            "train", ["experiment=quickstart", *TINY, "model.weights=null", f"model.arch={arch}"], tmp_path
        )
        with pytest.raises(UserError, match=f"model.arch={arch}: not an architecture"):
            train(cfg)


def test_a_run_dir_under_a_file_or_read_only_is_one_line(tmp_path):
    """hydra.run.dir under a file, or in a folder nobody may write: one line naming the path and why, exit 2."""
    import os
    import subprocess
    import sys

    from tests.conftest import EMBEDDED, OFFLINE_ENV, ROOT

    image = sorted((EMBEDDED / "test").glob("*.jpg"))[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [(blocker / "run", "a file stands where a folder is needed")]
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs a user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((locked / "run", "Permission denied"))
    for run_dir, why in cases:
        r = subprocess.run(
            [sys.executable, "-m", "evaluation.predict", f"source={image}", f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            env=OFFLINE_ENV | {"CI": "true"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        err = [x for x in r.stderr.splitlines() if x.strip()]
        assert (
            r.returncode == 2
            and len(err) == 1
            and str(blocker if "file" in why else run_dir.parent) in err[0]
        ), r.stderr[-2000:]
        assert why in err[0]


def test_convert_says_what_it_drops(embedded_copy, tmp_path):
    """data.strict=false skips a bad box and YOLO cannot hold a crowd box: convert (a command with no run dir and
    no log file) says both on stderr, not only its count line."""
    ann = embedded_copy / "valid" / "_annotations.coco.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["bbox"] = [0, 0, 99999, 10]
    doc["annotations"][1]["iscrowd"] = 1
    ann.write_text(json.dumps(doc))
    r = run_cli(
        [
            "training.data.convert",
            "data=coco_folder",
            f"data.root={embedded_copy}",
            "data.strict=false",
            "to=yolo",
            f"out={tmp_path / 'out'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "skipped 1 bad entries (1 bad_box)" in r.stderr
        and "1 crowd boxes (iscrowd=1) not written" in r.stderr
    )
