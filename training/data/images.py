"""One decode for every image everywhere: validation, the conversion cache, training, evaluation, the classifier.

Pages come from others: any mode PIL or cv2 can open (8/16-bit, gray, RGBA, palette, CMYK, EXIF-rotated),
truncated files, decompression bombs. :func:`decode_rgb` turns each into the same RGB uint8 pixels:

- EXIF orientation applied (as cv2 and ultralytics do);
- 16/32-bit integer samples keep their high byte (what cv2 and ultralytics' ``imread`` do: PIL's own
  ``convert("RGB")`` clips ``I;16`` to 255, a white page);
- transparency is composited on white: a page with an alpha channel is a page on paper (cv2 drops alpha and
  shows whatever colour sits under transparent pixels, often black);
- a truncated file is an error, never a partly grey page (PIL raises; cv2 would fill the rest silently).

ultralytics reads images itself (cv2): the YOLO conversion cache (``loader.prepare_yolo``) links an image only
when ultralytics' reader gives exactly these pixels, and otherwise stores these pixels as a lossless PNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pi_heif
import PIL
from PIL import Image, UnidentifiedImageError

from training.cli import DataError
from training.fileio import write_atomic

# ImageNet's channel mean / std: the normalisation of the torchvision ResNet18 and of the transformers detectors
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# HEIC / HEIF pages (phone photos of documents) through pi-heif, the decode-only libheif plugin ultralytics itself
# uses for them: registered here so that every reader (ours and ultralytics' PIL fallback) decodes them alike, and so
# that ultralytics' Image.open patch finds the plugin installed instead of warning about it on any unreadable file.
# libheif applies the file's rotation (irot) on decode and pi-heif resets the EXIF orientation to 1: the pixels come
# out upright once, in both readers.
pi_heif.register_heif_opener()

# bump when decode_rgb's output changes, so that cached checks and converted images are not reused
DECODE_VERSION = 2  # 2: a multi-page TIFF is refused where one page is expected


class ImageError(DataError):
    """An image that cannot be used; ``kind`` is what ``data.strict=false`` counts it as."""

    def __init__(self, message: str, kind: str = "unreadable_image"):
        super().__init__(message)
        self.kind = kind


def _open(path: Path, max_pixels: int | None):
    if not path.is_file():
        raise ImageError(f"{path}: image file not found", "missing_image")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: our own limit decides, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})", "too_large_image") from None
    except (UnidentifiedImageError, ImportError):
        # ImportError: ultralytics patches Image.open to try its HEIF plugin on files PIL does not recognise (it is
        # installed and registered above; an environment without it still gets a line about the file)
        head = path.read_bytes()[:8] if path.stat().st_size else b""
        what = "an empty file" if not head else f"not an image format PIL can read (starts with {head!r})"
        raise ImageError(f"{path}: unreadable image: {what}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageError(
            f"{path}: image is {w}x{h} ({w * h / 1e6:.0f} MP), above the pixel limit max_image_pixels={max_pixels} "
            "(data.max_image_pixels when training)",
            "too_large_image",
        )
    return im


ORIENTATION = 0x0112
# EXIF orientation -> the transposition that makes the page upright (as PIL's ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    try:
        tags = im.tag_v2 if im.format == "TIFF" else im.getexif()
        o = int(tags.get(ORIENTATION, 1))
    except Exception:  # malformed EXIF is not worth failing for; the pixels are still used unrotated
        return 1
    return o if o in _UPRIGHT else 1


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the file header, with EXIF orientation applied like the trainers do. Cheap: the
    pixels are not decoded (validation does that, see :class:`ImageChecker`)."""
    path = Path(path)
    with _open(path, max_pixels) as im:
        w, h = im.size
        # PIL's TIFF reader applies the orientation itself (its size is already rotated)
        orientation = _orientation(im) if im.format != "TIFF" else 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has size {w}x{h}")
    return w, h


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # 16-bit (I;16*) and 32-bit integer / float gray: keep the high byte of 16-bit samples like cv2
        a = np.asarray(im)
        if mode == "F":
            a = np.clip(a * 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else a, 0, 255)
            a = np.nan_to_num(a).astype(np.uint8)
        elif a.size and int(a.max()) > 255:
            a = (a.astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        else:
            a = a.clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        page.alpha_composite(rgba)
        return np.asarray(page.convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as e:  # modes PIL cannot convert to RGB (LAB, HSV...)
        raise ImageError(f"{getattr(im, 'filename', 'image')}: unsupported image mode {mode} ({e})") from None


# the image files every reader accepts (YOLO folders, predict, the classifier's page inference; COCO files name
# theirs): what PIL decodes here, AVIF included (Pillow 11.3+ reads it natively), HEIC / HEIF through pi-heif
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".heic", ".heif"}
)
# image formats that can hold several pages: predict reads each one like a PDF page
MULTI_PAGE_SUFFIXES = frozenset({".tif", ".tiff"})


def frame_count(path: str | Path, max_pixels: int | None = None) -> int:
    """How many pages an image file holds: more than one for a multi-page TIFF only (header reads only)."""
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        with im:
            # PIL sets n_frames on multi-frame formats only; a TIFF's frames are pages, other formats' are not
            return max(1, int(getattr(im, "n_frames", 1))) if im.format == "TIFF" else 1
    except (OSError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None


def rgb8(im: Image.Image) -> np.ndarray:
    """A PIL image as ``HxWx3`` RGB uint8 the way a decoded file becomes one (alpha on white, 16-bit gray's high
    byte): in-memory pages get the pixels their files would."""
    return np.ascontiguousarray(_to_rgb8(im))


def decode_rgb(path: str | Path, max_pixels: int | None = None, frame: int | None = None) -> np.ndarray:
    """The page as ``HxWx3`` RGB uint8, decoded completely (a truncated file raises :class:`ImageError`).

    ``frame``: the page (from 0) of a multi-page file (a TIFF); None for a one-page image, and a file of several
    pages is then refused (a dataset image is one page; predict reads each page of a multi-page TIFF).
    """
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        with im:
            # pages of a TIFF; other multi-frame files (a camera JPEG's MPO preview, an animated PNG / WebP) are
            # one picture: their first frame
            n = max(1, int(getattr(im, "n_frames", 1))) if im.format == "TIFF" else 1
            if frame is None and n > 1:
                raise ImageError(
                    f"{path}: a multi-page image ({n} pages) where one page is expected (predict reads every "
                    "page of a multi-page TIFF; split it for a dataset)",
                    "multi_page_image",
                )
            if frame is not None:
                if not 0 <= frame < n:
                    raise ImageError(f"{path}: no page {frame + 1} (the file has {n})")
                im.seek(frame)
                w, h = im.size
                if max_pixels and w * h > max_pixels:
                    raise ImageError(
                        f"{path}: page {frame + 1} is {w}x{h}, above the pixel limit max_image_pixels={max_pixels}",
                        "too_large_image",
                    )
            orientation = _orientation(im)  # before load: PIL's TIFF reader consumes the tag when it rotates
            upright_size = im.size if im.format == "TIFF" else None  # PIL gives TIFFs their upright size
            try:
                im.load()
            except OSError as e:
                truncated = "truncated" in str(e) or "broken" in str(e)
                kind = "truncated_image" if truncated else "unreadable_image"
                raise ImageError(f"{path}: truncated or corrupt image data ({e})", kind) from None
            except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise ImageError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
            # PIL never applies EXIF orientation on load, except for TIFFs, where it does on some load paths
            # and not on others (Pillow 13: an RGB TIFF comes out upright, an L one not): the size tells
            done = upright_size is not None and (im.size == upright_size or orientation in (2, 3, 4))
            upright = im.transpose(_UPRIGHT[orientation]) if orientation != 1 and not done else im
            arr = _to_rgb8(upright)
    except (
        OSError,
        ValueError,
        EOFError,
    ) as e:  # an ImageError (a UserError, neither of these) passes through
        raise ImageError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ImageError(f"{path}: decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_rgb(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """:func:`decode_rgb` as a PIL image (for code that resizes / crops with PIL)."""
    return Image.fromarray(decode_rgb(path, max_pixels))


def as_pil(image) -> Image.Image:
    """Any image input of the prediction paths as an RGB PIL image: a PIL image, an ``HxWx3`` array, or a file
    (decoded by :func:`load_rgb`)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    return load_rgb(image)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of decoded pixels (with their shape): two readers agree on an image iff the digests agree."""
    h = hashlib.sha256(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


class ImageChecker:
    """Decodes every pixel of an image once per content: the result (size and pixel digest, or why it is
    unusable) is cached under ``cache_dir`` keyed by the file's sha256, the decoder version and the pixel limit,
    so that a second validation of the same data reads hashes, not pixels, and the YOLO cache compares
    ultralytics' pixels with ours without decoding ours again."""

    # bump when the record layout changes
    RECORD = 2

    def __init__(self, cache_dir: Path | None, max_pixels: int | None):
        self.max_pixels = int(max_pixels) if max_pixels else None
        tag = f"v{DECODE_VERSION}-r{self.RECORD}-pil{PIL.__version__}-max{self.max_pixels or 0}"
        self.dir = Path(cache_dir) / "image-checks" / tag if cache_dir else None
        self._memo: dict[str, str] = {}  # file sha256 -> record, for checkers without a cache dir too

    def _record(self, path: Path) -> str:
        """``ok W H DIGEST`` or ``<kind> <reason>`` for the content of ``path``, decoding it at most once."""
        if not path.is_file():
            raise ImageError(f"{path}: image file not found", "missing_image")
        key = file_digest(path)
        if key in self._memo:
            return self._memo[key]
        entry = self.dir / key if self.dir else None
        if entry is not None and entry.is_file():
            record = entry.read_text(encoding="utf-8")
        else:
            try:
                pixels = decode_rgb(path, self.max_pixels)
                h, w = pixels.shape[:2]
                record = f"ok {w} {h} {pixel_digest(pixels)}"
            except ImageError as e:
                record = f"{e.kind} {str(e).removeprefix(f'{path}: ')}"
            if entry is not None:
                with contextlib.suppress(OSError):  # a read-only cache only costs speed
                    entry.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(entry, record)  # parallel workers never read half a record
        self._memo[key] = record
        return record

    def _ok(self, path: Path) -> list[str]:
        kind, _, rest = self._record(path).partition(" ")
        if kind != "ok":
            raise ImageError(f"{path}: {rest}", kind)
        return rest.split()

    def size(self, path: str | Path) -> tuple[int, int]:
        """(width, height) of a fully decodable image; :class:`ImageError` naming the file otherwise."""
        w, h, _ = self._ok(Path(path))
        return int(w), int(h)

    def digest(self, path: str | Path) -> str:
        """:func:`pixel_digest` of :func:`decode_rgb` of the image; :class:`ImageError` if it is unusable."""
        return self._ok(Path(path))[2]
