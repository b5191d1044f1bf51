"""``python -m training.classifier.generate out=DIR``: synthetic pages as a COCO dataset plus class-folder crops."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from training.classifier.proposals import crop
from training.classifier.synth import SynthConfig, generate_pages, write_pages
from training.cli import UserError, cli, require
from training.data.coco import COCO_FOLDERS


def generate(
    out: str | Path, pages: dict, seed: int = 0, page_cfg=None, crops: bool = True, context: float = 0.08
):
    """Write the dataset; returns ``{split: (n_pages, n_objects)}``. Refuses a non-empty ``out``."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new folder (nothing is overwritten)")
    cfg = SynthConfig.from_cfg(page_cfg or {})
    summary = {}
    for k, (split, folder) in enumerate(COCO_FOLDERS.items()):
        n = int(pages.get(split, 0) or 0)
        if n <= 0:
            continue
        # the same seed streams as the classifier's crops.synthetic, so the two agree page for page
        generated = generate_pages(n, seed * 10 + k, cfg)
        write_pages(generated, out / folder, prefix=f"{split}")
        if crops:
            for i, p in enumerate(generated):
                for j, o in enumerate(p.objects):
                    d = out / "crops" / split / o.label
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(crop(p.image, o.box, context)).save(d / f"{split}_{i:05d}_{j}.png")
        summary[split] = (n, sum(len(p.objects) for p in generated))
    return summary


@cli("generate")
def main(cfg: DictConfig) -> None:
    require(cfg, "out", usage="where the generated dataset goes")
    summary = generate(cfg.out, dict(cfg.pages), int(cfg.seed), cfg.page, bool(cfg.crops), float(cfg.context))
    text = ", ".join(f"{s} {n} pages / {m} objects" for s, (n, m) in summary.items())
    print(f"wrote {cfg.out} ({text})")


if __name__ == "__main__":
    main()
