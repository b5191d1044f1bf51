"""One decode for every image: every mode PIL and cv2 open gives the same pixels to validation, evaluation and
ultralytics' training; truncated pages and decompression bombs are clear errors (or skipped and counted)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import ROOT, compose_cfg
from training.cli import DataError
from training.data import load_dataset
from training.data import loader as loader_mod
from training.data.images import ImageChecker, ImageError, decode_rgb, image_size


def _ultralytics_rgb(path: Path) -> np.ndarray | None:
    from ultralytics.utils.patches import imread

    im = imread(str(path))
    return None if im is None else im[..., ::-1]


def _page(h: int = 48, w: int = 64) -> np.ndarray:
    """A page-like RGB array: light background, dark strokes, some colour."""
    rng = np.random.default_rng(h * 1000 + w)
    a = np.full((h, w, 3), 235, np.uint8)
    a[h // 3 : h // 3 + 3, 5 : w - 5] = (20, 20, 120)
    a += rng.integers(0, 15, a.shape, dtype=np.uint8)
    return a


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h (the pixels are never reached): a decompression bomb in 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")))
    return path


def test_16bit_gray_png_is_not_a_white_page(tmp_path):
    ramp = (np.linspace(0, 65535, 64)[None, :].repeat(32, 0)).astype(np.uint16)
    f = tmp_path / "page16.png"
    Image.fromarray(ramp).save(f)
    assert Image.open(f).mode.startswith("I")
    out = decode_rgb(f)
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255  # PIL's convert("RGB") gives 255 everywhere
    np.testing.assert_array_equal(out, _ultralytics_rgb(f))  # what ultralytics trains on


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)  # transparent black everywhere ...
    rgba[5:8, 5:25] = (0, 0, 200, 255)  # ... but an opaque blue stroke
    f = tmp_path / "page.png"
    Image.fromarray(rgba, "RGBA").save(f)
    out = decode_rgb(f)
    assert (out[0, 0] == 255).all()  # the transparent background is paper, not black
    assert tuple(out[6, 10]) == (0, 0, 200)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA", "I;16"])
def test_every_mode_decodes_to_rgb8(mode, tmp_path):
    base = Image.fromarray(_page())
    im = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    f = tmp_path / f"page{suffix}"
    im.save(f)
    out = decode_rgb(f)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert image_size(f) == (64, 48)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_rotation_matches_the_header_size_and_ultralytics(orientation, tmp_path):
    im = Image.fromarray(_page(40, 70))
    exif = Image.Exif()
    exif[0x0112] = orientation
    f = tmp_path / "rot.jpg"
    im.save(f, exif=exif, quality=95)
    w, h = image_size(f)
    out = decode_rgb(f)
    assert out.shape[:2] == (h, w)
    assert (w, h) == ((40, 70) if orientation in (6, 8) else (70, 40))


HEIC = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "size", "red_at"), [("page.heic", (96, 64), (3, 3)), ("rot6.heic", (64, 96), (3, 60))]
)
def test_heic_phone_photos_decode_upright_as_ultralytics_reads_them(name, size, red_at, tmp_path):
    """HEIC pages (tests/data/README.md): the header size is the upright size, the red corner sits where the
    rotation puts it (once, not twice), and ultralytics' reader gives the same pixels, so the YOLO cache links the
    file rather than converting it."""
    f = HEIC / name
    assert image_size(f) == size
    out = decode_rgb(f)
    assert out.shape == (size[1], size[0], 3)
    assert tuple(out[red_at]) == (200, 0, 0)
    np.testing.assert_array_equal(_ultralytics_rgb(f), out)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / name).symlink_to(f)
    assert loader_mod._same_pixels_for_ultralytics(tmp_path / "images") == 0


def test_a_file_that_is_no_image_is_one_line_without_ultralytics_plugin_noise(tmp_path, capfd, caplog):
    """ultralytics patches PIL's Image.open to fetch a HEIF plugin on any file PIL cannot identify: with pi-heif
    installed and registered, a broken page is our one line, and nothing about a missing requirement."""
    import ultralytics.utils.patches  # noqa: F401  (the patch is in place, as in every predict / train run)

    f = tmp_path / "scan.jpg"
    f.write_bytes(b"this is not a picture")
    with pytest.raises(ImageError, match="scan.jpg: unreadable image: not an image format"):
        decode_rgb(f)
    said = capfd.readouterr()
    assert "pi-heif" not in said.out + said.err + caplog.text


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_an_error_with_its_kind(suffix, tmp_path):
    f = tmp_path / f"page{suffix}"
    Image.fromarray(_page(200, 200)).save(f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    image_size(f)  # the header alone still reads: that is why validation decodes the pixels
    with pytest.raises(ImageError) as e:
        decode_rgb(f)
    assert e.value.kind == "truncated_image" and str(f) in str(e.value)


def test_decompression_bomb_is_one_clear_error(tmp_path):
    f = _png_header_only(tmp_path / "bomb.png", 15000, 12000)
    with pytest.raises(ImageError) as e:
        image_size(f, max_pixels=89478485)
    assert e.value.kind == "too_large_image" and "bomb.png" in str(e.value)
    with pytest.raises(ImageError):
        decode_rgb(f)  # no limit given: PIL's own (twice its 89.5 MP) still refuses 180 MP
    small = _png_header_only(tmp_path / "big.png", 5000, 5000)
    with pytest.raises(ImageError, match="max_image_pixels=1000000"):
        image_size(small, max_pixels=1_000_000)


def test_validation_cache_decodes_each_content_once(tmp_path, monkeypatch):
    f = tmp_path / "a.png"
    Image.fromarray(_page()).save(f)
    calls = []
    real = loader_mod.decode_rgb

    def counting(path, max_pixels=None):
        calls.append(path)
        return real(path, max_pixels)

    monkeypatch.setattr("training.data.images.decode_rgb", counting)
    checker = ImageChecker(tmp_path / "cache", 10_000_000)
    assert checker.size(f) == (64, 48)
    assert ImageChecker(tmp_path / "cache", 10_000_000).size(f) == (64, 48)
    assert len(calls) == 1
    # failures are cached too, and still raise with the file's name
    bad = tmp_path / "bad.png"
    bad.write_bytes(f.read_bytes()[:80])
    for _ in range(2):
        with pytest.raises(ImageError, match="bad.png"):
            ImageChecker(tmp_path / "cache", 10_000_000).size(bad)
    assert len(calls) == 2


def _coco_copy(embedded_copy: Path) -> tuple[Path, dict]:
    ann = embedded_copy / "train" / "_annotations.coco.json"
    return ann, json.loads(ann.read_text())


def test_truncated_train_page_fails_validation_naming_file_and_split(embedded_copy, tmp_path):
    ann, doc = _coco_copy(embedded_copy)
    victim = embedded_copy / "train" / doc["images"][0]["file_name"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    cfg = compose_cfg("train", ["data=coco_folder", f"data.root={embedded_copy}"], tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(cfg.data, ("train", "val"))
    msg = str(e.value)
    assert victim.name in msg and "split 'train'" in msg and "truncated" in msg
    cfg.data.strict = False
    ds = load_dataset(cfg.data, ("train", "val"))
    assert ds.skipped_metrics() == {"data/skipped/train/truncated_image": 1.0}
    assert len(ds["train"].images) == len(doc["images"]) - 1


def test_yolo_cache_gives_ultralytics_our_pixels(embedded_copy, tmp_path):
    """A 16-bit and an RGBA page in the data: ultralytics reads the 16-bit one as we do (high byte), so it is
    linked; it would show black under the transparent band of the RGBA one, so that is stored as our PNG."""
    ann, doc = _coco_copy(embedded_copy)
    first, second = (embedded_copy / "train" / im["file_name"] for im in doc["images"][:2])
    gray = np.asarray(Image.open(first).convert("L")).astype(np.uint16) * 257
    sixteen = first.with_suffix(".png")
    Image.fromarray(gray).save(sixteen)
    rgba = np.asarray(Image.open(second).convert("RGBA")).copy()
    rgba[:10, :, 3] = 0  # a transparent band
    alpha = second.with_suffix(".png")
    Image.fromarray(rgba, "RGBA").save(alpha)
    doc["images"][0]["file_name"], doc["images"][1]["file_name"] = sixteen.name, alpha.name
    ann.write_text(json.dumps(doc))
    cfg = compose_cfg("train", ["data=coco_folder", f"data.root={embedded_copy}"], tmp_path)
    ds = load_dataset(cfg.data, ("train", "val"))
    data_yaml = loader_mod.prepare_yolo(ds, tmp_path / "cache")
    images = sorted((data_yaml.parent / "images" / "train").iterdir())
    stored = {p.name.split("_", 1)[1]: p for p in images}
    assert stored[sixteen.name].is_symlink() and not stored[alpha.name].is_symlink()
    assert sum(p.is_symlink() for p in images) == len(images) - 1
    for im in ds["train"].images:
        cached = next(p for p in images if p.stem == f"{im.id}_{im.file.stem}")
        np.testing.assert_array_equal(_ultralytics_rgb(cached), decode_rgb(im.file))


MODES = ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "1"]
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".webp": "WEBP"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(MODES),
    suffix=st.sampled_from(sorted(FORMATS)),
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    orientation=st.sampled_from([1, 3, 6, 8]),
)
def test_any_decodable_page_reaches_ultralytics_with_our_pixels(tmp_path, mode, suffix, h, w, orientation):
    """Whatever PIL can write, decode_rgb gives RGB uint8 of the header's (rotated) size, and the cache step
    makes ultralytics' reader see exactly those pixels."""
    base = Image.fromarray(_page(h, w))
    im = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    d = tmp_path / f"{mode.replace(';', '')}{suffix}{h}x{w}o{orientation}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "images").mkdir(parents=True)
    f = d / f"page{suffix}"
    kwargs = {}
    if suffix in (".jpg", ".png", ".tif", ".webp"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    try:
        im.save(f, FORMATS[suffix], **kwargs)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to read
    try:
        out = decode_rgb(f)
    except ImageError:
        with pytest.raises(ImageError):  # unreadable for us: validation reports it, never a crash
            ImageChecker(None, None).size(f)
        return
    wh = image_size(f)
    assert out.dtype == np.uint8 and out.shape == (wh[1], wh[0], 3)
    link = d / "images" / f.name
    link.symlink_to(f)
    loader_mod._same_pixels_for_ultralytics(d / "images")
    (cached,) = list((d / "images").iterdir())
    np.testing.assert_array_equal(_ultralytics_rgb(cached), out)


def test_bomb_page_in_the_data_is_one_line_or_skipped_with_a_count(embedded_copy, tmp_path):
    ann, doc = _coco_copy(embedded_copy)
    bomb = _png_header_only(embedded_copy / "train" / "bomb.png", 15000, 12000)
    doc["images"].append({"id": 99999, "file_name": bomb.name, "width": 15000, "height": 12000})
    ann.write_text(json.dumps(doc))
    cfg = compose_cfg("train", ["data=coco_folder", f"data.root={embedded_copy}"], tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(cfg.data, ("train",))
    assert "bomb.png" in str(e.value) and "\n" not in str(e.value)
    cfg.data.strict = False
    ds = load_dataset(cfg.data, ("train",))
    assert ds.skipped_metrics() == {"data/skipped/train/too_large_image": 1.0}


def test_our_reader_registers_the_heif_plugin_itself():
    """Without ultralytics imported (whose Image.open patch would register pi-heif on a first failure), importing
    our image reader is what makes PIL read HEIC."""
    code = (
        "import sys, training.data.images, PIL.Image as I; "
        "assert 'ultralytics' not in sys.modules; print(I.registered_extensions().get('.heic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "HEIF", out.stderr[-2000:]
