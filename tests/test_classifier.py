"""Two-stage region classifier: generator, proposals, freezing, mining, compatibility mode, bad input, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF, ROOT, compose_cfg, data_node, decode_table
from training.classifier.crops import Crop, detection_crops, folder_crops
from training.classifier.generate import generate
from training.classifier.model import RegionClassifier, load_classifier, preprocess
from training.classifier.proposals import box_iou, propose
from training.classifier.synth import CLASSES, SynthConfig, generate_pages
from training.classifier.trainer import augmenter, mine
from training.cli import ConfigError, DataError
from training.data import load_dataset

# the colour proposals as conf/model/resnet18-classifier.yaml sets them
PROPOSALS = OmegaConf.load(CONF / "model" / "resnet18-classifier.yaml").proposals

# the tiny end-to-end setting: generated pages only where real crops are not the point, 32 px crops, 2 steps
CLF_TINY = [
    "experiment=classifier_two_stage",
    "model.weights=null",
    "model.imgsz=32",
    "crops.synthetic.pages.train=6",
    "crops.synthetic.pages.val=3",
    "crops.synthetic.pages.test=3",
    "train.stage1.epochs=1",
    "train.stage2.epochs=1",
    "train.mining.epochs=1",
    "train.mining.k=2",
    "train.augment.copies=1",
    "train.max_steps=2",
    "train.batch=8",
    "evaluation.n_bootstrap=20",
    "evaluation.n_pages=2",
]


def test_generator_is_seeded_and_labels_are_exact():
    a, b = generate_pages(3, 7), generate_pages(3, 7)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert [o.box for p in a for o in p.objects] == [o.box for p in b for o in p.objects]
    assert not np.array_equal(generate_pages(1, 8)[0].image, a[0].image)
    paper = np.median(a[0].image.reshape(-1, 3), 0)
    for p in a:
        for o in p.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 640
            # the label hugs the ink: the box is darker than paper and its border rows hold ink
            inside = p.image[y0:y1, x0:x1].reshape(-1, 3)
            assert inside.mean() < paper.mean() - 3
    # counts per page follow the config
    pages = generate_pages(5, 0, SynthConfig(signatures=(0, 0), stamps=(2, 2), thumbs=(1, 1)))
    for p in pages:
        labels = [o.label for o in p.objects]
        assert labels.count("signature") == 0 and labels.count("stamp") <= 2 and labels.count("thumb") <= 1


def test_unknown_generator_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="stampz"):
        SynthConfig.from_cfg({"stampz": [1, 2]})
    with pytest.raises(ConfigError, match="green"):
        SynthConfig.from_cfg({"stamp_inks": ["green"]})


def test_proposals_recover_planted_stamps_and_thumbs():
    # held-out seed, default generator and default proposal settings
    pages = generate_pages(80, 4242)
    hit, total = {"stamp": 0, "thumb": 0}, {"stamp": 0, "thumb": 0}
    for p in pages:
        regions = propose(p.image, PROPOSALS)
        for o in p.objects:
            if o.label in total:
                total[o.label] += 1
                hit[o.label] += any(box_iou(o.box, r.box) >= 0.5 for r in regions)
    assert min(total.values()) > 40
    for c in total:
        assert hit[c] / total[c] >= 0.95, (c, hit[c], total[c])


def test_proposals_ignore_black_print_and_blank_pages():
    page = np.full((640, 640, 3), 245, np.uint8)
    assert propose(page, PROPOSALS) == []
    page[100:110, 50:500] = 30  # a black text line
    assert propose(page, PROPOSALS) == []


def test_generated_dataset_reads_as_coco_and_crop_folders(tmp_path):
    out = tmp_path / "gen"
    summary = generate(out, {"train": 3, "val": 2, "test": 1}, seed=1)
    assert summary["train"][0] == 3
    cfg = {
        "name": "gen",
        "format": "coco",
        "root": str(out),
        "annotation_file": "_annotations.coco.json",
        "splits": {"train": "train", "val": "valid", "test": "test"},
        "strict": True,
    }

    ds = load_dataset(data_node(cfg), ["train", "val", "test"])
    assert ds.class_names == list(CLASSES)
    assert len(ds["train"].annotations) == summary["train"][1]
    crops = folder_crops(out / "crops" / "train", list(CLASSES))
    assert len(crops) == summary["train"][1]
    with pytest.raises(Exception, match="not empty"):
        generate(out, {"train": 1})


def _tiny_model(imgsz=32) -> RegionClassifier:
    torch.manual_seed(0)
    return RegionClassifier(list(CLASSES), imgsz, "imagenet")


def _crops(n=12) -> list[Crop]:
    rng = np.random.default_rng(0)
    return [
        Crop(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8), i % 3, "t", f"c{i}") for i in range(n)
    ]


def test_stage1_freezes_backbone_and_its_batchnorm_stage2_unfreezes():
    model = _tiny_model()
    model.freeze_backbone()
    trainable = {n for n, p in model.net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    x, y = preprocess([c.image for c in _crops()], 32), torch.tensor([c.label for c in _crops()])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = {k: v.clone() for k, v in model.net.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running means / vars of the frozen BN did not move either

    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after2 = model.net.state_dict()
    assert not torch.equal(after["conv1.weight"], after2["conv1.weight"])
    assert not torch.equal(after["bn1.running_mean"], after2["bn1.running_mean"])


def test_mining_adds_exactly_the_misclassified_crops_times_k():
    model = _tiny_model()
    pool = _crops(15)
    probs = model.predict_proba([c.image for c in pool])
    expected = [c.ref for c, p in zip(pool, probs.argmax(1), strict=True) if p != c.label]
    assert expected, "an untrained model should get some of these wrong"
    wrong, new = mine(
        model, pool, 3, augmenter(OmegaConf.load(CONF / "trainer" / "classifier.yaml").augment), seed=0
    )
    assert [c.ref for c in wrong] == expected
    assert len(new) == 3 * len(wrong)
    assert [c.ref for c in new] == [r for r in expected for _ in range(3)]
    assert all(c.kind == "mined" for c in new)
    assert [c.label for c in new] == [c.label for c in wrong for _ in range(3)]
    # copies are augmented, not duplicates, and reproducible from the seed
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(new[::3], new[1::3], strict=True))
    _, again = mine(
        model, pool, 3, augmenter(OmegaConf.load(CONF / "trainer" / "classifier.yaml").augment), seed=0
    )
    assert all(np.array_equal(a.image, b.image) for a, b in zip(new, again, strict=True))


@pytest.mark.parametrize("normalize", ["imagenet", "none"])
def test_preprocess_matches_the_torch_formula(normalize):
    """The NumPy preprocessing is the resize, /255 and (x - mean) / std of torchvision's recipe, bit for bit."""
    from training.classifier.model import resized
    from training.data.images import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((31, 57), (224, 224), (300, 90))]
    x = preprocess(crops, 64, normalize)
    ref = torch.stack(
        [torch.from_numpy(np.asarray(resized(c, 64), np.float32) / 255.0).permute(2, 0, 1) for c in crops]
    )
    if normalize == "imagenet":
        ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )
    assert x.dtype == torch.float32 and x.shape == (3, 3, 64, 64) and x.is_contiguous()
    assert torch.equal(x, ref)
    assert preprocess([], 64, normalize).shape == (0, 3, 64, 64)
    with pytest.raises(ConfigError, match="model.normalize"):
        preprocess(crops, 64, "zscore")


def test_published_state_dict_loads_in_compatibility_mode(tmp_path):
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.fc = torch.nn.Linear(512, 3)
    torch.save(net.state_dict(), tmp_path / "published.pth")
    model = load_classifier(tmp_path / "published.pth")
    assert (
        model.classes == ["signature", "stamp", "thumb"] and model.normalize == "none" and model.imgsz == 224
    )
    # resize + to-tensor, no normalisation: values stay in [0, 1]
    x = preprocess([np.full((50, 80, 3), 255, np.uint8)], model.imgsz, model.normalize)
    assert x.shape == (1, 3, 224, 224) and float(x.max()) == 1.0 and float(x.min()) == 1.0
    net.eval()
    with torch.no_grad():
        ref = torch.softmax(net(x), 1).numpy()
    np.testing.assert_allclose(model.predict_proba([np.full((50, 80, 3), 255, np.uint8)]), ref, atol=1e-5)

    bad = resnet18(weights=None)
    bad.fc = torch.nn.Linear(512, 5)
    torch.save(bad.state_dict(), tmp_path / "five.pth")
    with pytest.raises(DataError, match=r"five.pth: 'fc.weight' has shape \(5, 512\)"):
        load_classifier(tmp_path / "five.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"):
        load_classifier(tmp_path / "junk.pth")


def test_bad_crop_folders_name_the_culprit(tmp_path):
    root = tmp_path / "crops"
    (root / "stamp").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(root / "stamp" / "a.png")
    assert len(folder_crops(root, list(CLASSES))) == 1
    (root / "stamp" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"broken.png: unreadable image"):
        folder_crops(root, list(CLASSES))
    (root / "stamp" / "broken.png").unlink()
    Image.new("RGB", (2, 20), "red").save(root / "stamp" / "thin.png")
    with pytest.raises(DataError, match=r"thin.png: empty crop"):
        folder_crops(root, list(CLASSES))
    (root / "stamp" / "thin.png").unlink()
    (root / "logos").mkdir()
    with pytest.raises(DataError, match=r"logos: unknown class folder 'logos'"):
        folder_crops(root, list(CLASSES))


def test_detection_categories_must_map_to_classes(embedded_copy):
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    data = compose_cfg("train", []).data
    data = OmegaConf.merge(data, {"root": str(embedded_copy)})
    split = load_dataset(data, ["val"])["val"]
    crops = detection_crops(split, list(CLASSES), {}, 0.08)
    assert crops and all(c.label == 0 for c in crops)
    with pytest.raises(DataError, match="category 'signature' is not a classifier class"):
        detection_crops(split, ["stamp", "thumb"], {}, 0.08)
    assert detection_crops(split, ["stamp", "thumb"], {"signature": None}, 0.08) == []


def test_classifier_two_stage_end_to_end(cfg_factory, tmp_path):
    from evaluation.classification import evaluate_classifier_run, validation_metrics
    from training.train import train

    cfg = cfg_factory(CLF_TINY)
    run = tmp_path / "run"
    m = train(cfg, evaluate=evaluate_classifier_run, validate=validation_metrics)
    for f in (
        "metrics.json",
        "classifier.md",
        "classifier.csv",
        "crop_counts.csv",
        "confusion_val.png",
        "confusion_test.png",
        "history.csv",
        "weights/stage1.pt",
        "weights/stage2.pt",
        "weights/base.pt",
        "weights/best.pt",
        "pages/test_page_00000.json",
        "pages/test_page_00000.png",
    ):
        assert (run / f).is_file(), f
    for split in ("val", "test"):
        for k in ("accuracy", "macro_f1", "f1/stamp", "recall/thumb", "accuracy_ci_low"):
            assert f"{split}/{k}" in m and f"base/{split}/{k}" in m
    assert m["test/proposals/recall/stamp"] >= 0.5
    # real signatures from the embedded detection data are in the pool
    train_sigs = m["counts/signature/original"]
    assert train_sigs > 20
    # the counts are consistent: k copies per misclassified crop; total = the training set
    for c in CLASSES:
        assert m[f"counts/{c}/augmented"] == m[f"counts/{c}/original"]  # copies=1
        assert m[f"counts/{c}/augmented_misclassified"] == 2 * m[f"counts/{c}/misclassified"]
    assert sum(m[f"counts/{c}/total"] for c in CLASSES) == m["train/crops"]
    page = json.loads((run / "pages" / "test_page_00000.json").read_text())
    assert {"box", "class", "confidence", "source", "probabilities"} <= set(page["regions"][0])
    doc = json.loads((run / "metrics.json").read_text())
    assert "random init" in doc["provenance"]["weights"]
    assert load_classifier(run / "weights" / "best.pt").classes == list(CLASSES)

    # an interrupted run resumes from its saved phases without retraining them
    (run / "metrics.json").unlink()
    (run / "weights" / "best.pt").unlink()
    cfg2 = cfg_factory([*CLF_TINY, "resume=true"])
    m2 = train(cfg2, evaluate=evaluate_classifier_run, validate=validation_metrics)
    assert m2["train/epochs"] == 0
    assert m2["test/accuracy"] == m["test/accuracy"]


def test_cli_bad_crop_folder_is_one_line(tmp_path):
    bad = tmp_path / "crops"
    (bad / "logos").mkdir(parents=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            *CLF_TINY,
            f"hydra.run.dir={tmp_path / 'run'}",
            f"+crops.folders=[{{root: {bad}, split: train}}]",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "unknown class folder 'logos'" in lines[0] and "Traceback" not in r.stderr


def test_page_inference_cli_writes_json_and_refuses_to_overwrite(tmp_path):
    model = _tiny_model(32)
    ckpt = model.save(tmp_path / "clf.pt")
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.fromarray(generate_pages(1, 3)[0].image).save(pages / "scan.png")
    cmd = [
        sys.executable,
        "-m",
        "training.classifier.infer",
        f"checkpoint={ckpt}",
        f"pages={pages}",
        f"out={tmp_path / 'res'}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "res" / "scan.json").read_text())
    assert doc["regions"] and (tmp_path / "res" / "scan.png").is_file()
    before = (tmp_path / "res" / "scan.json").read_bytes()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tmp_path / "res" / "scan.json").read_bytes() == before


def test_classifier_wandb_offline_run_holds_tables_and_figures(cfg_factory, tmp_path, monkeypatch):
    from evaluation.classification import evaluate_classifier_run, validation_metrics
    from training.train import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = cfg_factory([*CLF_TINY, "train.mining.rounds=0", "crops.detection.enabled=false", "logger=wandb"])
    train(cfg, evaluate=evaluate_classifier_run, validate=validation_metrics)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    blob = b"".join(f.read_bytes() for f in runs[0].rglob("*") if f.is_file())
    for key in (b"val/macro_f1", b"classifier/per_class", b"classifier/crop_counts", b"classifier/figures"):
        assert key in blob, key
    assert list(runs[0].rglob("*.png")), "confusion matrices and annotated pages are uploaded as images"


def test_detector_boxes_join_the_candidates(trained_run):
    from omegaconf import OmegaConf

    from training.backends.base import Detections
    from training.classifier.infer import load_detector
    from training.classifier.pipeline import classify_page

    page = np.full((320, 480, 3), 245, np.uint8)
    page[100:140, 60:260] = 30  # a black-ink "signature": no colour proposal finds it

    class Fake:
        def predict(self, images):
            return [Detections([[60, 100, 260, 140], [0, 0, 5, 5]], [0.9, 0.1], [0, 0])]

    model = _tiny_model()
    assert classify_page(page, model, PROPOSALS, 0.08) == []
    res = classify_page(page, model, PROPOSALS, 0.08, Fake(), 0.25)
    assert [r["box"] for r in res] == [[60, 100, 260, 140]] and res[0]["source"] == "detector"
    # a real trained detector loads through its backend and runs on the page
    _, run_dir, _ = trained_run
    det = load_detector(
        OmegaConf.create(
            {
                "checkpoint": str(run_dir / "weights" / "best.pt"),
                "backend": "ultralytics",
                "decode": decode_table(),
            }
        )
    )
    out = classify_page(page, model, PROPOSALS, 0.08, det, 0.0)
    assert all(r["source"] == "detector" for r in out)


def test_user_coco_files_with_stamp_and_thumb_categories_feed_the_crops(tmp_path):
    from omegaconf import OmegaConf

    from training.classifier.crops import build_crop_splits

    out = tmp_path / "gen"
    summary = generate(out, {"train": 2, "val": 1}, seed=5, crops=False)
    crops_cfg = OmegaConf.merge(
        compose_cfg("train", ["experiment=classifier_two_stage"]).crops,
        {
            "synthetic": {"enabled": False},
            "detection": {"enabled": False},
            "coco": [
                {"file": str(out / "train" / "_annotations.coco.json"), "split": "train"},
                {"file": str(out / "valid" / "_annotations.coco.json"), "split": "val"},
            ],
        },
    )
    crops, _ = build_crop_splits(crops_cfg, None, list(CLASSES))
    assert len(crops["train"]) == summary["train"][1] and len(crops["val"]) == summary["val"][1]
    assert {c.label for c in crops["train"]} <= {0, 1, 2}
    with pytest.raises(ConfigError, match="crop split 'holdout'"):
        build_crop_splits(
            OmegaConf.merge(
                crops_cfg,
                {"coco": [{"file": str(out / "train" / "_annotations.coco.json"), "split": "holdout"}]},
            ),
            None,
            list(CLASSES),
        )
