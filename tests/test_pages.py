"""Page-level "signed?" decisions (evaluation/pages.py) on hand-made cases with known answers, and the operating
point the evaluator stores in a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from evaluation.pages import conf_at_recall, operating_point, page_metrics, page_prf, page_truth
from evaluation.run import page_decisions
from training.backends.base import Detections

# 6 pages: 4 signed (best scores 0.9, 0.7, 0.4, none), 2 unsigned (0.5, none)
SIGNED = np.array([True, True, True, True, False, False])
BEST = np.array([0.9, 0.7, 0.4, 0.0, 0.5, 0.0])


def test_precision_recall_f1_by_hand():
    # at 0.6: called signed = pages 0, 1 -> tp 2, precision 1, recall 2/4
    assert page_prf(SIGNED, BEST, 0.6) == pytest.approx((1.0, 0.5, 2 / 3))
    # at 0.45: pages 0, 1, 4 -> tp 2, precision 2/3, recall 1/2
    p, r, f = page_prf(SIGNED, BEST, 0.45)
    assert (p, r) == pytest.approx((2 / 3, 0.5)) and f == pytest.approx(2 * p * r / (p + r))
    # at 0.4 (inclusive): pages 0, 1, 2, 4 -> tp 3 of 4 called, recall 3/4
    assert page_prf(SIGNED, BEST, 0.4)[:2] == pytest.approx((0.75, 0.75))
    # a page without a box is never called signed, whatever the confidence
    assert page_prf(SIGNED, BEST, 0.0)[:2] == pytest.approx((0.75, 0.75))
    # nothing called: precision 0 when signed pages exist, 1 when none does; recall undefined without signed pages
    assert page_prf(SIGNED, BEST, 0.95)[:2] == (0.0, 0.0)
    p, r, _ = page_prf(np.zeros(3, bool), np.zeros(3), 0.5)
    assert p == 1.0 and math.isnan(r)


def test_conf_at_target_recall():
    # 3 of 4 signed pages have a box: recall 0.5 needs the 2nd best signed score, 0.75 the 3rd
    assert conf_at_recall(SIGNED, BEST, 0.5) == (0.7, True)
    assert conf_at_recall(SIGNED, BEST, 0.75) == (0.4, True)
    # 0.98 cannot be reached (a signed page has no box): the lowest positive best score, marked unreached
    assert conf_at_recall(SIGNED, BEST, 0.98) == (0.4, False)
    op = operating_point(SIGNED, BEST, 0.75, "val")
    assert op["conf"] == 0.4 and op["reached"] and op["recall_on_split"] == 0.75 and op["chosen_on"] == "val"
    with pytest.raises(ValueError):
        conf_at_recall(SIGNED, BEST, 0.0)


def test_intervals_bracket_the_value():
    m = page_metrics(np.tile(SIGNED, 10), np.tile(BEST, 10), 0.45, n_bootstrap=200, seed=0)
    for k in ("precision", "recall", "f1"):
        assert m[f"page/{k}_ci_low"] <= m[f"page/{k}"] <= m[f"page/{k}_ci_high"], k
    assert m["page/n_pages"] == 60 and m["page/n_signed"] == 40 and m["page/n_signed_without_box"] == 10


def test_the_run_stores_the_valid_operating_point_and_scores_test_at_it():
    ev = OmegaConf.create(
        {"page": {"target_recall": 0.75, "choose_on": "val"}, "conf_fixed": 0.25, "n_bootstrap": 0, "seed": 0}
    )
    # test: the same pages with other scores; scored at valid's 0.4, not at a confidence of its own
    truth = {"val": (SIGNED, BEST), "test": (SIGNED, np.array([0.45, 0.3, 0.2, 0.0, 0.41, 0.0]))}
    metrics = {}
    op = page_decisions(truth, ev, metrics)
    assert op["conf"] == 0.4 and metrics["val/page/conf_at_target_recall"] == 0.4
    assert metrics["test/page/conf"] == 0.4
    assert metrics["test/page/recall"] == pytest.approx(0.25) and metrics["test/page/precision"] == 0.5
    # without valid: no operating point, pages scored at conf_fixed
    metrics = {}
    assert page_decisions({"test": truth["test"]}, ev, metrics) is None
    assert metrics["test/page/conf"] == 0.25


def test_page_truth_reads_the_split(tmp_path):
    from tests.conftest import compose_cfg
    from training.data import load_dataset

    split = load_dataset(compose_cfg("train", [], tmp_path).data, ["test"])["test"]
    preds = {im.id: Detections.empty() for im in split.images}
    first = split.images[0].id
    preds[first] = Detections(np.array([[0, 0, 5, 5.0]]), np.array([0.8]), np.array([0]))
    signed, best = page_truth(split, preds)
    assert signed.sum() == sum(1 for im in split.images if split.annotations_for(im.id))
    assert best[0] == pytest.approx(0.8) and best[1:].max() == 0.0


def test_without_valid_the_models_stored_operating_point_is_used():
    """Evaluating test only (a user's own labelled pages): pages are scored at the model's stored operating point,
    which metrics.json then keeps (with where it came from), not at conf_fixed."""
    ev = OmegaConf.create(
        {"page": {"target_recall": 0.98, "choose_on": "val"}, "conf_fixed": 0.25, "n_bootstrap": 0, "seed": 0}
    )
    stored = {"conf": 0.45, "target_recall": 0.98, "chosen_on": "val", "from": "/x/model.json"}
    metrics = {}
    op = page_decisions({"test": (SIGNED, BEST)}, ev, metrics, stored)
    assert metrics["test/page/conf"] == 0.45 and op["conf"] == 0.45 and op["stored_in"] == "/x/model.json"
    assert "val/page/conf_at_target_recall" not in metrics
