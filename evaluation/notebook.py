"""What the notebooks use to show what a command wrote (they run the commands through ``sigdet.run``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def show(path: str | Path) -> None:
    """Display a Markdown file or an image inline (plain print outside a notebook)."""
    path = Path(path)
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:  # pragma: no cover
        print(path.read_text() if path.suffix == ".md" else path)
        return
    display(Markdown(path.read_text(encoding="utf-8")) if path.suffix == ".md" else Image(str(path)))
