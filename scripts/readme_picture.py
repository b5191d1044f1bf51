"""The README picture from a finished run: its valid PR curve beside pages with true and predicted boxes.

python scripts/readme_picture.py outputs/quickstart/<run> docs/quickstart.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    parts = [run / "pr_curve_val.png", run / "pages_val.png"]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        sys.exit(f"error: {missing[0]} not found (a run evaluated on val?)")
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.6), dpi=90, gridspec_kw={"width_ratios": [1, 2.2]})
    for ax, im in zip(axes, (Image.open(p) for p in parts), strict=True):
        ax.imshow(im)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
