"""Small helpers the notebooks use to run the documented commands and show what they wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(module: str, *overrides: str, tail: int = 30) -> str:
    """``python -m <module> <overrides>`` in the project root, as the README writes it; the output's last
    ``tail`` lines are returned (and printed). A failure raises with the output's end, not a bare exit code."""
    cmd = [sys.executable, "-m", module, *overrides]
    print("$", " ".join(cmd[1:]))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = (r.stdout + r.stderr).strip().splitlines()
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed ({r.returncode}):\n" + "\n".join(lines[-tail:]))
    text = "\n".join(lines[-tail:])
    print(text)
    return text


def show(path: str | Path) -> None:
    """Display a Markdown file or an image inline (plain print outside a notebook)."""
    path = Path(path)
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:  # pragma: no cover
        print(path.read_text() if path.suffix == ".md" else path)
        return
    display(Markdown(path.read_text(encoding="utf-8")) if path.suffix == ".md" else Image(str(path)))
