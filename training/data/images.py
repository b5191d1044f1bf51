"""Image file helpers shared by readers, validation and prediction."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from training.errors import DataError


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, with EXIF orientation applied like the trainers do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # malformed EXIF is not worth failing for
                orientation = 1
    except (UnidentifiedImageError, OSError, ImportError) as e:
        # ImportError: ultralytics patches Image.open to try a HEIF plugin on unknown files.
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if w <= 0 or h <= 0:
        raise DataError(f"{path}: image has size {w}x{h}")
    return w, h


def load_rgb(path: str | Path):
    """Load an image as an RGB PIL image with EXIF orientation applied."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ImportError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__})") from None
