"""Synthetic pretraining pages (training/data/synthetic.py): labels match the ink drawn, pages are seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import compose_cfg
from training.cli import ConfigError
from training.data.synthetic import PageConfig, generate_page, handwriting

# every capture style alone (a clean page, an office scan - often binarised -, a photograph in perspective), the
# mix measured in the README, and the default (capture off: the version-1 pages)
STYLES = {
    "clean": PageConfig(certificate_p=1.0),
    "scan": PageConfig(scan_p=1.0),
    "photo": PageConfig(photo_p=1.0),
    "mix": PageConfig(certificate_p=0.15, scan_p=0.3, photo_p=0.3),
    "default": PageConfig(),
}


@pytest.mark.parametrize("style", list(STYLES))
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 10**6))
def test_each_box_is_the_tight_bounds_of_one_signatures_ink(style, seed, index):
    img, boxes, ink = generate_page(np.random.default_rng([seed, index]), STYLES[style])
    h, w = ink.shape
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    covered = np.zeros_like(ink)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        inside = ink[y0:y1, x0:x1]
        # tight: ink on every edge of the box
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # and the ink is really on the page: darker than the paper in its own box
        assert img[y0:y1, x0:x1][inside].mean() < np.median(img[y0:y1, x0:x1][~inside]) - 20
        covered[y0:y1, x0:x1] = True
    assert not ink[~covered].any()  # no signature ink outside the labels
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_photographed_pages_sit_on_a_background_and_scans_can_be_binarised():
    photo, _, _ = generate_page(np.random.default_rng(5), STYLES["photo"])
    corners = [photo[:8, :8], photo[:8, -8:], photo[-8:, :8], photo[-8:, -8:]]
    # the page covers at most 95% of the frame's width: some corner shows the background, not paper
    assert min(float(np.median(c)) for c in corners) < 0.95 * float(np.median(photo))
    scans = [generate_page(np.random.default_rng(i), STYLES["scan"])[0] for i in range(8)]
    for img in scans:
        assert np.array_equal(img[..., 0], img[..., 2])  # grey
    # most binarised pages have no mid-grey left (JPEG blurs some edges)
    assert sum(((img > 60) & (img < 200)).mean() < 0.02 for img in scans) >= 3


def test_pages_depend_only_on_seed_and_index():
    a = generate_page(np.random.default_rng([3, 7]))
    b = generate_page(np.random.default_rng([3, 7]))
    c = generate_page(np.random.default_rng([3, 8]))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_pages_hold_distractors_that_are_not_labelled():
    """Print, stamps and non-signature handwriting darken the page outside the signature boxes."""
    cfg = PageConfig(signatures=(0, 0), blank_p=0.0, initials=(2, 2), notes=(3, 3), stamps=(1, 1))
    img, boxes, ink = generate_page(np.random.default_rng(0), cfg)
    assert boxes == [] and not ink.any()
    assert (img.min(axis=2) < 120).mean() > 0.01


def test_handwriting_is_ink_of_the_requested_scale():
    rng = np.random.default_rng(0)
    small = handwriting(rng, 4.0, words=(1, 1), letters=(3, 3))
    large = handwriting(rng, 16.0, words=(1, 1), letters=(3, 3))
    assert 0 < small.max() <= 1 and large.shape[0] > small.shape[0]


def test_materialised_pages_load_as_a_dataset(tmp_path):
    from training.data import load_dataset

    over = [
        "data=synthetic",
        "data.synthetic.pages.train=6",
        "data.synthetic.pages.val=2",
        f"data.cache_dir={tmp_path}",
    ]
    cfg = compose_cfg("train", over)
    ds = load_dataset(cfg.data, ("train", "val"))
    assert len(ds["train"].images) == 6 and len(ds["val"].images) == 2 and ds.class_names == ["signature"]
    roots = list((tmp_path / "synthetic").iterdir())
    assert len(roots) == 1
    again = load_dataset(cfg.data, ("train",))  # the cache is reused, not regenerated
    assert [im.file for im in again["train"].images] == [im.file for im in ds["train"].images]
    assert list((tmp_path / "synthetic").iterdir()) == roots


def test_unknown_page_settings_fail_clearly():
    with pytest.raises(ConfigError, match="unknown settings"):
        PageConfig.from_cfg({"signaturs": [1, 2]})
