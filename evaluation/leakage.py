"""``python -m evaluation.leakage data=...``: near-duplicate pages within and across a dataset's splits.

A published dataset that is an augmented merge (altered copies of a page on both sides of a split) inflates every
score earned on it. This audit pairs pages that are copies of one another up to a resize (0.5-1.5x), JPEG
re-encoding (quality 40-95), a small crop (up to 5% off each side) and a tint, and keeps apart pages that only
look alike (forms and letters on one template with other text): docs/leakage.md.

Two stages, every number in conf/leakage.yaml (``near_duplicates``):

1. **Candidates**: perceptual hashes (imagehash's pHash and dHash) of the central part of each page's normalised
   grey thumbnail; each page's ``candidates`` nearest pages by Hamming distance. Hashes rank a copy's original
   among its nearest pages, but no Hamming threshold separates a copy cropped 5% a side from a distinct page on
   the same template (docs/leakage.md), so they only choose what stage 2 looks at.
2. **Decision**: one page is aligned onto the other (a scale and a shift, what a crop and a resize do: a coarse
   search of normalised cross-correlation, refined by OpenCV's ECC), both blurred by a pixel, and cut into blocks.
   A block *differs* when the ink in it differs by more than ``block_differs`` of the two blocks' ink; the
   **distance** is the share of inked blocks that differ, the smaller of the two directions (b onto a, a onto
   b). A near-copy differs nowhere (re-encoding and resampling blur strokes, they do not move them); a page on the
   same template differs where its text does. Pages are near-duplicates at ``distance <= threshold``.

The evaluator (``evaluation.exclude_near_duplicates=true``, evaluation/run.py) calls :func:`near_copies_of_train`
and :func:`dedup_metrics` to score the other splits again without their pages that have a near-copy in train.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from evaluation.metrics import HEADLINE, compute_metrics
from evaluation.report import fmt_num, markdown_table
from training.cli import CONF, ConfigError, UserError, cli
from training.data import load_dataset
from training.data.images import decode_rgb
from training.data.schema import DetectionSplit
from training.progress import progress
from training.train import run_dir_of, save_config

log = logging.getLogger(__name__)

#: the hashes ``near_duplicates.hashes`` may name (imagehash's functions, called with ``hash_size``)
HASHES = ("phash", "dhash", "whash", "average_hash")


@dataclass(frozen=True)
class Page:
    """One page as the audit sees it: where it is, and its normalised grey thumbnails and hash bits."""

    file: Path
    split: str
    small: np.ndarray  # align_width wide: the coarse alignment search
    big: np.ndarray  # compare_width wide: the refined alignment and the block comparison
    bits: np.ndarray  # the concatenated hash bits (bool)


@dataclass(frozen=True)
class Pair:
    a: Page
    b: Page
    distance: float  # share of inked blocks that differ after alignment (1.0: the pages cannot be aligned)
    hash_distance: int  # Hamming distance of the candidate hashes (their rank decided the comparison)

    def record(self) -> dict:
        return {
            "a": str(self.a.file),
            "a_split": self.a.split,
            "b": str(self.b.file),
            "b_split": self.b.split,
            "distance": round(float(self.distance), 4),
            "hash_distance": int(self.hash_distance),
        }


def settings() -> DictConfig:
    """``near_duplicates`` of conf/leakage.yaml: the method's settings, read by the evaluator too (one home)."""
    return OmegaConf.load(CONF / "leakage.yaml").near_duplicates


def _check(nd) -> None:
    bad = [h for h in nd.hashes if h not in HASHES]
    if bad or not len(nd.hashes):
        raise ConfigError(f"near_duplicates.hashes: {list(nd.hashes)}: choose among {list(HASHES)}")
    if not 0.0 <= float(nd.threshold) < 1.0:
        raise ConfigError(f"near_duplicates.threshold={nd.threshold}: a share of blocks in [0, 1)")
    if int(nd.candidates) < 1:
        raise ConfigError(f"near_duplicates.candidates={nd.candidates}: at least 1")
    size = int(nd.hash_size)
    if size < 2 or ("whash" in nd.hashes and size & (size - 1)):
        raise ConfigError(f"near_duplicates.hash_size={size}: at least 2 (whash: a power of 2)")


def _normalised(grey, width: int, nd) -> np.ndarray:
    """``grey`` (PIL, mode L) resized to ``width`` (aspect kept), grey levels stretched so that paper (the
    ``percentiles[1]`` level) is 1 and ink (``percentiles[0]``) 0, whatever the tint, the exposure or the JPEG
    quality; over at least ``min_contrast`` grey levels (a blank page keeps its faint marks faint)."""
    from PIL import Image

    height = max(1, round(width * grey.height / grey.width))
    resample = Image.Resampling.BOX if width <= grey.width else Image.Resampling.BILINEAR
    x = np.asarray(grey.resize((width, height), resample), np.float32)
    lo, hi = np.percentile(x, [float(q) for q in nd.percentiles])
    span = max(hi - lo, float(nd.min_contrast))
    return np.clip(1.0 - (hi - x) / span, 0.0, 1.0).astype(np.float32)


def page(file: Path | str, split: str, nd, max_pixels: int | None = None) -> Page:
    """The audit's view of one image file (decoded as everywhere else: training.data.images.decode_rgb)."""
    import imagehash
    from PIL import Image

    grey = Image.fromarray(decode_rgb(file, max_pixels)).convert("L")
    small = _normalised(grey, int(nd.align_width), nd)
    big = _normalised(grey, int(nd.compare_width), nd)
    h, w = big.shape
    m = float(nd.hash_margin)
    centre = Image.fromarray((big * 255).astype(np.uint8)).crop(
        (round(m * w), round(m * h), w - round(m * w), h - round(m * h))
    )
    bits = [getattr(imagehash, name)(centre, hash_size=int(nd.hash_size)).hash.ravel() for name in nd.hashes]
    return Page(Path(file), split, small, big, np.concatenate(bits).astype(bool))


def pages_of(name: str, split: DetectionSplit, nd, max_pixels: int | None = None) -> list[Page]:
    """The audit's view of every page of ``split`` (called ``name``)."""
    return [page(im.file, name, nd, max_pixels) for im in progress(split.images, desc=f"reading {name}")]


def hamming(a: list[Page], b: list[Page]) -> np.ndarray:
    """Hamming distances of the hash bits, ``len(a) x len(b)`` (as a product of 0/1 matrices: no N x N x bits
    array)."""
    x = np.stack([p.bits for p in a]).astype(np.float32)
    y = np.stack([p.bits for p in b]).astype(np.float32)
    same = x @ y.T + (1 - x) @ (1 - y).T
    return np.rint(x.shape[1] - same).astype(np.int64)


def _aspect_ok(a: Page, b: Page, nd) -> bool:
    ra, rb = a.big.shape[0] / a.big.shape[1], b.big.shape[0] / b.big.shape[1]
    return abs(np.log(ra / rb)) <= np.log1p(float(nd.max_aspect_change))


def _coarse(a: np.ndarray, b: np.ndarray, nd) -> tuple[float, float, float, float] | None:
    """The correlation, scale ``s`` and shift ``(tx, ty)`` that put ``b`` on ``a`` (a point p of b lands on
    s * p + t of a): normalised cross-correlation of b's centre, rescaled, over a; None when no scale fits."""
    import cv2

    change = float(nd.max_scale_change)
    best, found = -2.0, None
    margin = float(nd.align_margin)
    for s in np.exp(np.linspace(np.log(1 - change), np.log(1 + change), int(nd.align_scales))):
        size = (max(1, round(b.shape[1] * s)), max(1, round(b.shape[0] * s)))
        bs = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        my, mx = round(margin * bs.shape[0]), round(margin * bs.shape[1])
        t = bs[my : bs.shape[0] - my, mx : bs.shape[1] - mx]
        if t.shape[0] > a.shape[0] or t.shape[1] > a.shape[1] or min(t.shape) < 4 or t.std() == 0:
            continue
        _, v, _, loc = cv2.minMaxLoc(cv2.matchTemplate(a, t, cv2.TM_CCOEFF_NORMED))
        if v > best:
            # the scale actually applied (rounded sizes), so that the shift is exact at the compare width too
            best, found = v, (float(v), bs.shape[1] / b.shape[1], float(loc[0] - mx), float(loc[1] - my))
    return found


def _blocks(x: np.ndarray, k: int) -> np.ndarray:
    hb, wb = x.shape[0] // k, x.shape[1] // k
    return x[: hb * k, : wb * k].reshape(hb, k, wb, k).mean((1, 3))


def _align(a: Page, b: Page, nd) -> tuple[np.ndarray, np.ndarray] | None:
    """a's compare-width page and b's warped onto it (-1 outside b), both blurred; None when no alignment
    correlates at least ``min_correlation``."""
    import cv2

    found = _coarse(a.small, b.small, nd)
    if found is None or found[0] < float(nd.min_correlation):
        return None
    _, s, tx, ty = found
    k = a.big.shape[1] / a.small.shape[1]  # compare / align width
    kb = b.big.shape[1] / b.small.shape[1]
    sigma = float(nd.blur)
    fa = cv2.GaussianBlur(a.big, (0, 0), sigma)
    fb = cv2.GaussianBlur(b.big, (0, 0), sigma)
    # the warp ECC refines maps a's pixels to b's: p_b = (p_a - t) / s, in compare-width pixels
    ss = s * k / kb
    warps = [np.array([[1 / ss, 0, -tx * k / ss], [0, 1 / ss, -ty * k / ss]], np.float32)]
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(nd.ecc_iterations), 1e-4)
    # coarse to fine: ECC's basin is wider on the smaller, smoother pages
    for level in map(float, nd.ecc_levels):
        ha = cv2.resize(fa, None, fx=level, fy=level, interpolation=cv2.INTER_AREA) if level != 1 else fa
        hb = cv2.resize(fb, None, fx=level, fy=level, interpolation=cv2.INTER_AREA) if level != 1 else fb
        start = warps[-1].copy()
        start[:, 2] *= level
        try:
            _, w = cv2.findTransformECC(ha, hb, start, cv2.MOTION_AFFINE, criteria, None, 1)
        except cv2.error:
            continue  # no convergence (blank or flat pages): the alignment so far
        w[:, 2] /= level
        warps.append(w)
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    size = (fa.shape[1], fa.shape[0])
    warped = [cv2.warpAffine(fb, w, size, flags=flags, borderValue=-1.0) for w in warps]
    # ECC now and then drifts off a page with little on it: the warp that correlates best where all are defined
    both = np.logical_and.reduce([w >= 0 for w in warped])
    return fa, max(warped, key=lambda w: _correlation(fa, np.where(both, w, -1.0)))


def _differing(fa: np.ndarray, wb: np.ndarray, nd) -> tuple[float, np.ndarray]:
    """The share of the inked blocks of two aligned pages (:func:`_align`) that differ (1.0 when they overlap
    too little or hold too little ink), and the block mask of those that differ."""
    import cv2

    valid = wb >= 0
    blk = int(nd.block)
    # blocks wholly inside both pages, one block away from the edges: a crop cuts there
    inside = np.pad(_blocks(valid.astype(np.float32), blk) == 1, 1).astype(np.uint8)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8))[1:-1, 1:-1].astype(bool)
    ink_a, ink_b = 1.0 - fa, 1.0 - np.clip(wb, 0.0, 1.0)
    ma, mb = _blocks(ink_a, blk), _blocks(ink_b, blk)
    diff = _blocks(np.abs(ink_a - ink_b) * valid, blk)
    inked = inside & (np.maximum(ma, mb) > float(nd.ink))
    differ = inked & (diff > np.maximum(float(nd.block_differs) * (ma + mb), float(nd.min_difference)))
    if inside.sum() < float(nd.min_overlap) * inside.size or inked.sum() < int(nd.min_inked_blocks):
        return 1.0, differ  # barely overlapping, or (nearly) blank pages: nothing to tell them apart by
    return float(differ.sum() / inked.sum()), differ


def _one_way(a: Page, b: Page, nd) -> float:
    """The share of a's inked blocks whose ink differs from b's, b aligned onto a; 1.0 when it cannot be."""
    aligned = _align(a, b, nd)
    return 1.0 if aligned is None else _differing(*aligned, nd)[0]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` where ``b`` is defined (>= 0)."""
    m = b >= 0
    if m.sum() < 16:
        return -1.0
    x, y = a[m] - a[m].mean(), b[m] - b[m].mean()
    return float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-9))


def distance(a: Page, b: Page, nd) -> float:
    """The share of inked blocks that differ once one page is aligned onto the other, the smaller of the two
    directions (an alignment that goes wrong on a sparse page goes wrong one way); 1.0 when they cannot be
    aligned."""
    if not _aspect_ok(a, b, nd):
        return 1.0
    return min(_one_way(a, b, nd), _one_way(b, a, nd))


def _candidates(d: np.ndarray, k: int, same: bool) -> set[tuple[int, int]]:
    """Each row's ``k`` nearest columns (not itself when ``same``) as ``(row, column)``; with ``same`` each pair
    once, ``row < column``."""
    d = d.astype(np.float64)
    if same:
        np.fill_diagonal(d, np.inf)
    k = min(k, d.shape[1] - (1 if same else 0))
    if k <= 0:
        return set()
    near = np.argpartition(d, k - 1, axis=1)[:, :k]
    out = set()
    for i, row in enumerate(near):
        for j in row:
            if np.isfinite(d[i, j]):
                out.add((min(i, int(j)), max(i, int(j))) if same else (i, int(j)))
    return out


def compare(pages: list[Page], nd, others: list[Page] | None = None) -> list[Pair]:
    """Every candidate pair compared, closest first: among ``pages`` (each with its nearest by hash), or, with
    ``others``, each of ``others`` with its nearest in ``pages``."""
    if not pages or (others is not None and not others):
        return []
    ref = pages if others is None else others
    d = hamming(ref, pages)
    cands = _candidates(d, int(nd.candidates), others is None)
    out = [
        Pair(ref[i], pages[j], distance(ref[i], pages[j], nd), int(d[i, j]))
        for i, j in progress(sorted(cands), desc="comparing")
    ]
    return sorted(out, key=lambda p: (p.distance, p.hash_distance))


# --- the evaluator's side (evaluation.exclude_near_duplicates) ---------------------------------------------------


def near_copies_of_train(dataset, splits: list[str], data_cfg) -> dict[str, dict]:
    """For each of ``splits`` but train: ``{"files": its pages with a near-copy in train, "pairs": their
    records}`` (``dataset`` holds train; ``data_cfg``: its conf/data entry, for the pixel limit)."""
    nd = settings()
    _check(nd)
    others = [s for s in splits if s != "train"]
    if not others:
        return {}
    max_pixels = data_cfg.max_image_pixels
    train = pages_of("train", dataset["train"], nd, max_pixels)
    out = {}
    for split in others:
        pages = pages_of(split, dataset[split], nd, max_pixels)
        pairs = [p for p in compare(train, nd, pages) if _paired(p, nd)]
        out[split] = {"files": {p.a.file for p in pairs}, "pairs": [p.record() for p in pairs]}
        log.info("%s: %d pages with a near-copy in train", split, len(out[split]["files"]))
    return out


def without(split: DetectionSplit, files: set[Path]) -> DetectionSplit:
    """``split`` without the pages ``files`` (every other field kept: categories, crowd regions, source)."""
    keep = [im for im in split.images if im.file not in files]
    ids = {im.id for im in keep}
    return replace(
        split,
        images=keep,
        annotations=[a for a in split.annotations if a.image_id in ids],
        crowd=[a for a in split.crowd if a.image_id in ids],
        _by_image=None,
    )


def dedup_metrics(name: str, split: DetectionSplit, preds: dict, near: dict, ev) -> dict[str, float]:
    """The metrics of ``split`` (called ``name``) again without its pages that have a near-copy in train
    (``near``: its entry of :func:`near_copies_of_train`), from the predictions already made (``preds``: image id
    -> Detections); keys ``<name>/dedup/<metric>`` and ``<name>/dedup/excluded_pages``."""
    reduced = without(split, near["files"])
    out = {f"{name}/dedup/excluded_pages": float(len(split.images) - len(reduced.images))}
    if not reduced.images:
        log.warning("%s: every page has a near-copy in train: no deduplicated score", name)
        return out
    kept = {im.id for im in reduced.images}
    result = compute_metrics(
        reduced,
        {i: p for i, p in preds.items() if i in kept},
        float(ev.conf_fixed),
        int(ev.n_bootstrap),
        int(ev.seed),
    )
    return out | {f"{name}/dedup/{k}": v for k, v in result.metrics.items()}


def dedup_markdown(metrics: dict[str, float], splits: list[str]) -> str:
    """metrics.md's section: each headline metric with and without the pages that have a near-copy in train."""
    splits = [s for s in splits if f"{s}/dedup/excluded_pages" in metrics]
    if not splits:
        return ""
    rows = [
        {"metric": "pages excluded"} | {s: str(int(metrics[f"{s}/dedup/excluded_pages"])) for s in splits}
    ]
    for name in HEADLINE:
        rows.append(
            {"metric": name}
            | {
                s: f"{fmt_num(metrics.get(f'{s}/{name}'))} -> {fmt_num(metrics.get(f'{s}/dedup/{name}'))}"
                for s in splits
            }
        )
    head = (
        "## Without the pages that have a near-copy in train\n\n"
        "All pages -> without them (evaluation.exclude_near_duplicates; method: docs/leakage.md).\n"
    )
    return markdown_table(rows, head)


# --- the audit -----------------------------------------------------------------------------------------------------


def _paired(p: Pair, nd) -> bool:
    return p.distance <= float(nd.threshold)


def _label(p: Page) -> str:
    name = p.file.name
    return f"{p.split}: {name if len(name) <= 34 else name[:31] + '...'}"


def contact_sheet(path: Path, pairs: list[Pair], nd, sheet, max_pixels: int | None = None) -> Path | None:
    """The closest pairs side by side, each labelled with its splits, names and distance, framed green when the
    rule pairs them and grey when it does not (the closest distinct pages show where the threshold falls)."""
    from PIL import Image, ImageDraw, ImageOps

    pairs = pairs[: int(sheet.max_pairs)]
    if not pairs:
        return None
    w, pad, text_h = int(sheet.page_width), 6, 30
    tiles = []
    for p in pairs:
        ims = []
        for q in (p.a, p.b):
            im = Image.fromarray(decode_rgb(q.file, max_pixels))
            ims.append(im.resize((w, max(1, round(w * im.height / im.width))), Image.Resampling.BILINEAR))
        h = max(im.height for im in ims)
        colour = (0, 150, 0) if _paired(p, nd) else (150, 150, 150)
        tile = Image.new("RGB", (2 * w + 3 * pad, h + text_h + 2 * pad), colour)
        for k, im in enumerate(ims):
            tile.paste(im, (pad + k * (w + pad), text_h + pad))
        draw = ImageDraw.Draw(tile)
        verdict = "near-duplicate" if _paired(p, nd) else "distinct"
        draw.text((pad, 2), f"{verdict}  distance {p.distance:.3f}", fill="white")
        draw.text((pad, 15), f"{_label(p.a)}  |  {_label(p.b)}", fill="white")
        tiles.append(ImageOps.expand(tile, border=pad, fill="white"))
    cols = max(1, min(int(sheet.columns), len(tiles)))
    rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
    width = max(sum(t.width for t in r) for r in rows)
    height = sum(max(t.height for t in r) for r in rows)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for r in rows:
        x = 0
        for t in r:
            out.paste(t, (x, y))
            x += t.width
        y += max(t.height for t in r)
    out.save(path)
    return path


def _counts(pairs: list[Pair], splits: list[str]) -> dict[str, int]:
    """Pairs per split pair (``train/test``: one page in each), every pair of ``splits`` listed."""
    counts = {f"{a}/{b}": 0 for i, a in enumerate(splits) for b in splits[i:]}
    for p in pairs:
        a, b = sorted((p.a.split, p.b.split), key=splits.index)
        counts[f"{a}/{b}"] += 1
    return counts


def _with_copy_in_train(pairs: list[Pair], split: str) -> int:
    """How many pages of ``split`` have a near-copy in train."""
    return len(
        {q.file for p in pairs for q, o in ((p.a, p.b), (p.b, p.a)) if (q.split, o.split) == (split, "train")}
    )


def audit(cfg: DictConfig) -> dict:
    """Read ``cfg.splits`` of ``cfg.data``, compare every page with its nearest candidates, write leakage.json,
    leakage.md and leakage.png into the run dir; returns what leakage.json holds."""
    nd = cfg.near_duplicates
    _check(nd)
    splits = list(cfg.splits)
    if not splits or len(set(splits)) != len(splits):
        raise ConfigError(f"splits={splits}: name each split to audit once")
    run_dir = run_dir_of(cfg)
    if (run_dir / "leakage.json").exists():
        raise UserError(f"{run_dir} already holds an audit (leakage.json); choose another hydra.run.dir")
    from training.runfiles import refuse_held_run

    refuse_held_run(run_dir)  # a training run, an export, a predict run
    dataset = load_dataset(cfg.data, splits)
    max_pixels = cfg.data.max_image_pixels
    compared = compare([p for s in splits for p in pages_of(s, dataset[s], nd, max_pixels)], nd)
    pairs = [p for p in compared if _paired(p, nd)]
    result = {
        "data": str(cfg.data.name),
        "sources": {s: dataset[s].source for s in splits},
        "pages": {s: len(dataset[s].images) for s in splits},
        "compared_pairs": len(compared),
        "within_splits": sum(p.a.split == p.b.split for p in pairs),
        "across_splits": sum(p.a.split != p.b.split for p in pairs),
        "counts": _counts(pairs, splits),
        "pages_with_a_copy_in_train": {
            s: _with_copy_in_train(pairs, s) for s in splits if s != "train" and "train" in splits
        },
        "near_duplicates": OmegaConf.to_container(nd, resolve=True),
        "pairs": [p.record() for p in pairs],
        # the nearest pages the rule keeps apart: where the threshold falls
        "closest_distinct": [p.record() for p in compared if not _paired(p, nd)][: int(cfg.closest_distinct)],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    (run_dir / "leakage.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    sheet = contact_sheet(run_dir / "leakage.png", compared, nd, cfg.sheet, max_pixels)
    md = markdown(result, sheet, int(cfg.table_rows))
    (run_dir / "leakage.md").write_text(md, encoding="utf-8")
    print(md)
    log.info("wrote %s, leakage.md and leakage.png", run_dir / "leakage.json")
    return result


def markdown(result: dict, sheet: Path | None, max_rows: int) -> str:
    """leakage.md: the counts per split pair, then the pairs (the first ``max_rows``)."""
    pages = ", ".join(f"{s}: {n}" for s, n in result["pages"].items())
    head = (
        f"# Near-duplicate pages: {result['data']}\n\n"
        f"{sum(result['pages'].values())} pages ({pages}); {result['compared_pairs']} candidate pairs compared; "
        f"near-duplicates at distance <= {result['near_duplicates']['threshold']} (the share of inked blocks that "
        f"differ once aligned). Pairs within a split: {result['within_splits']}; across splits: "
        f"{result['across_splits']}.\n"
    )
    counts = [{"splits": k, "pairs": str(v)} for k, v in result["counts"].items()]
    copies = "".join(
        f"\n{n} of the {result['pages'][s]} {s} pages have a near-copy in train."
        for s, n in result["pages_with_a_copy_in_train"].items()
    )
    rows = [
        {
            "a": f"{r['a_split']}: {Path(r['a']).name}",
            "b": f"{r['b_split']}: {Path(r['b']).name}",
            "distance": f"{r['distance']:.3f}",
        }
        for r in result["pairs"][:max_rows]
    ]
    text = markdown_table(counts, head) + copies + "\n\n"
    text += markdown_table(rows, "## Pairs\n") if rows else "No near-duplicate pairs.\n"
    if len(result["pairs"]) > len(rows):
        text += f"\n... and {len(result['pairs']) - len(rows)} more in leakage.json.\n"
    if sheet is not None:
        text += f"\nThe closest pairs (paired: green; kept apart: grey): ![contact sheet]({sheet.name})\n"
    return text


@cli("leakage")
def main(cfg: DictConfig) -> None:
    audit(cfg)


if __name__ == "__main__":
    main()
