"""Each private name and patch of training/compat/ checked against the installed library: these tests fail when the
library changes under one of them (a renamed private, another signature, a patched behaviour that no longer shows),
and pyproject.toml bounds each library to the releases they pass on. Tiny local objects only: no download."""

from __future__ import annotations

import contextlib
import fractions
import inspect
import pickle

import numpy as np
import pytest
import torch

from training.compat import ultralytics as cu


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _patches():
    import ultralytics.utils.patches as patches

    return patches


# -- ultralytics ------------------------------------------------------------------------------------------------
def test_ultralytics_reexports_resolve():
    for name, module in cu.EXPORTS.items():
        assert getattr(cu, name) is getattr(__import__(module, fromlist=[name]), name), name
    for name in cu.TRAINERS:
        assert name in cu.EXPORTS and isinstance(getattr(cu, name), type)
    with pytest.raises(AttributeError):
        cu.NotAnUltralyticsName  # noqa: B018


def test_restricted_loader_switch_and_private_safe_load():
    """The switch safe_load() turns on: the env variable read at import into two module constants, and the private
    ``tasks._SafeLoad`` (``SUPPORTED``, ``loading(weight)``) whose allow-list our torch_load wrapper registers."""
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as uutils

    assert isinstance(tasks.SAFE_LOAD, bool) and isinstance(uutils.SAFE_LOAD, bool)
    assert tasks._SafeLoad.SUPPORTED is True
    assert _params(tasks._SafeLoad.loading) == ["weight"]
    assert isinstance(tasks._SafeLoad.loading(__file__), contextlib.AbstractContextManager)
    # what parse_model's no-eval path reads
    assert "SAFE_LOAD" in inspect.getsource(tasks._SafeLoad.restricted)
    assert cu.SAFE_LOAD_ENV in inspect.getsource(uutils)


def test_torch_load_is_rebound_in_three_modules_and_unrestricted_upstream(tmp_path):
    """ultralytics' torch_load is one function imported by name into the three modules safe_load() rebinds, and
    upstream it unpickles without restriction (what the patch exists for)."""
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils.patches as patches
    import ultralytics.utils.torch_utils as torch_utils

    assert not getattr(patches.torch_load, "restricted", False)  # no context open
    assert torch_utils.torch_load is patches.torch_load and tasks.torch_load is patches.torch_load
    assert "weights_only" in inspect.getsource(patches.torch_load)
    plain = tmp_path / "fraction.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, plain)  # a global outside any allow-list
    assert patches.torch_load(plain)["x"] == fractions.Fraction(1, 3)  # upstream: unpickled as asked


def test_safe_load_restricts_within_and_restores_after(tmp_path):
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils.patches as patches
    import ultralytics.utils.torch_utils as torch_utils

    plain = tmp_path / "fraction.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, plain)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, weights)
    original = patches.torch_load
    with cu.safe_load():
        with cu.safe_load():  # re-entrant: the inner exit keeps the outer restriction
            pass
        for module in (patches, torch_utils, tasks):
            assert getattr(module.torch_load, "restricted", False), module.__name__
        with pytest.raises(pickle.UnpicklingError):
            patches.torch_load(plain)
        with pytest.raises(pickle.UnpicklingError):
            patches.torch_load(plain, weights_only=False)  # whatever the caller asks
        assert torch.equal(patches.torch_load(weights)["w"], torch.ones(2))  # plain weights load the same
        from ultralytics.utils.torch_utils import strip_optimizer

        assert strip_optimizer(plain) == {}  # ultralytics' own caller: refused, logged as skipped
    for module in (patches, torch_utils, tasks):
        assert module.torch_load is original, module.__name__
    assert tasks.SAFE_LOAD is True  # the switch stays on (it only restricts)
    with pytest.raises(pickle.UnpicklingError):
        cu.trial_load(plain)


def test_trainer_private_set_up_step():
    """TrainerHooks overrides ``BaseTrainer._setup_train`` (no arguments; run once by ``_do_train``, where AMP is
    decided) and wraps ``__init__`` / ``train`` (the DDP worker's script builds the trainer with these keywords)."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils.dist import generate_ddp_file

    assert _params(BaseTrainer._setup_train) == ["self"]
    assert "self._setup_train()" in inspect.getsource(BaseTrainer._do_train)
    assert "self.amp = " in inspect.getsource(BaseTrainer._setup_train)
    assert _params(BaseTrainer.train) == ["self"]
    assert _params(BaseTrainer.__init__) == ["self", "cfg", "overrides", "_callbacks"]
    worker = inspect.getsource(generate_ddp_file)
    # the trainer class travels by reference, and the worker runs its train()
    assert '"trainer": type(trainer)' in worker and "trainer.train()" in worker

    class Base:
        def __init__(self, *args, **kwargs):
            self.calls = []
            self.restricted_at_init = getattr(_patches().torch_load, "restricted", False)

        def _setup_train(self):
            self.calls.append("setup")

        def train(self):
            return getattr(_patches().torch_load, "restricted", False)

    class Ours(cu.TrainerHooks, Base):
        def around_setup_train(self, setup):
            self.calls.append("before")
            setup()
            self.calls.append("after")

    t = Ours()
    t._setup_train()
    assert t.calls == ["before", "setup", "after"]
    assert t.restricted_at_init and t.train()


def test_trainer_of_a_model_through_private_smart_load():
    from ultralytics.engine.model import Model

    assert _params(Model._smart_load) == ["self", "key"]
    model = cu.YOLO("yolov8n.yaml", verbose=False)  # built from ultralytics' bundled YAML, random init
    assert cu.trainer_base(model) is cu.DetectionTrainer
    assert cu.RTDETR.task_map.fget(None)["detect"]["trainer"] is cu.RTDETRTrainer


def test_export_mode_gives_one_raw_tensor_and_constant_splits():
    """The export flags of the heads exist (setting a renamed one would pass silently) and put the head in
    export mode: one raw ``(batch, 4 + classes, anchors)`` tensor; ``C2f.forward_split`` computes ``forward``."""
    from ultralytics.nn.tasks import DetectionModel

    for flag in ("dynamic", "export", "format", "max_det", "shape", "xyxy"):
        assert hasattr(cu.Detect, flag), flag
    for flag in ("export", "format", "max_det"):
        assert hasattr(cu.RTDETRDecoder, flag), flag
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False).eval()
    x = torch.rand(1, 3, 64, 64)
    c2f = next(m for m in model.modules() if isinstance(m, cu.C2f))
    inp = torch.rand(1, c2f.cv1.conv.in_channels, 8, 8)
    with torch.no_grad():
        reference = c2f(inp)
        cu.export_mode(model)
        assert c2f.forward == c2f.forward_split
        torch.testing.assert_close(c2f(inp), reference)
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5, 8 * 8 + 4 * 4 + 2 * 2)


def test_wrap_label_loading_sees_every_page(tmp_path):
    """A tiny YOLODataset: each item goes through the instance's ``get_image_and_label``, which returns the label
    dict copy-paste edits (``img``, ``instances`` with the Instances API it uses, ``cls``); mosaic's extra pages
    come from it too."""
    import cv2
    from ultralytics.cfg import DEFAULT_CFG
    from ultralytics.data.dataset import YOLODataset

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((64, 64, 3), 255, np.uint8))
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    data = {"names": {0: "signature"}, "nc": 1, "channels": 3}
    hyp = DEFAULT_CFG  # ultralytics' training defaults: mosaic on every page
    dataset = YOLODataset(img_path=str(tmp_path / "images"), imgsz=64, augment=True, hyp=hyp, data=data)
    seen = []

    class Recording:
        def __init__(self, load, tag):
            self.load, self.tag = load, tag

        def __call__(self, index):
            seen.append((self.tag, index))
            label = self.load(index)
            assert {"img", "instances", "cls"} <= set(label)
            inst = label["instances"]
            inst.convert_bbox("xyxy")
            inst.denormalize(64, 64)
            assert inst.bboxes.shape == (1, 4) and inst.segments is not None
            cu.Instances(inst.bboxes, inst.segments, inst.keypoints, bbox_format="xyxy", normalized=False)
            return label

    cu.wrap_label_loading(dataset, Recording, "paste")
    cu.wrap_label_loading(dataset, Recording, "twice")  # idempotent per wrapper class
    assert hyp.mosaic == 1.0
    dataset[0]
    assert seen == [("paste", 0)] * 4  # the page and the three others of its mosaic


# -- transformers ---------------------------------------------------------------------------------------------
def test_detr_loss_still_averages_the_box_count_twice():
    """The bug box_count_summed works around is still in the installed transformers (when this fails, transformers
    fixed it: the patch, which then stays off by itself, can go), and the patched name is accelerate's reduce."""
    from accelerate.utils import reduce
    from transformers.loss import loss_for_object_detection as losses

    from training.compat.transformers import _averages_box_count_twice

    assert _averages_box_count_twice(losses)
    assert losses.reduce is reduce and "reduction" in _params(reduce)


def test_box_count_summed_only_within_several_processes():
    import functools

    from accelerate.utils import reduce
    from transformers.loss import loss_for_object_detection as losses

    from training.compat.transformers import box_count_summed

    with box_count_summed(1):
        assert losses.reduce is reduce
    with box_count_summed(2):
        assert isinstance(losses.reduce, functools.partial) and losses.reduce.func is reduce
        assert losses.reduce.keywords == {"reduction": "sum"}
        assert float(losses.reduce(torch.tensor(3.0))) == 3.0  # one process here: the value itself
    assert losses.reduce is reduce


def _tiny_rf_detr_embeddings():
    import transformers
    from transformers.models.rf_detr import modeling_rf_detr

    cfg = transformers.RfDetrDinov2Config(
        hidden_size=8, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64, num_windows=1
    )
    return modeling_rf_detr.RfDetrDinov2Embeddings(cfg).eval()


def test_rf_detr_interpolates_position_embeddings_while_tracing(tmp_path):
    """What fixed_position_embeddings works around: RF-DETR's embeddings re-sample their position embeddings with
    antialiased bicubic whenever traced, which torch.onnx.export cannot take (when this fails, transformers changed
    it: the patch, which then finds nothing to patch, can go); patched, the same module exports at its size and gives
    the eager numbers."""
    import onnxruntime as ort
    from torch.onnx.errors import UnsupportedOperatorError

    from training.compat.transformers import fixed_position_embeddings, interpolates_while_tracing

    emb = _tiny_rf_detr_embeddings()
    assert interpolates_while_tracing(emb)
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(UnsupportedOperatorError, match="bicubic"):
        torch.onnx.export(emb, (x,), str(tmp_path / "a.onnx"), opset_version=17, dynamo=False)
    container = torch.nn.Sequential(emb)
    assert fixed_position_embeddings(container, 64, 64) == 1
    assert fixed_position_embeddings(container, 64, 64) == 1  # again (another export size): from the original
    torch.onnx.export(emb, (x,), str(tmp_path / "b.onnx"), opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = emb(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "b.onnx"))
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert not interpolates_while_tracing(torch.nn.Linear(2, 2))


TWO_STAGE = ("rt_detr_v2", "d_fine", "deimv2", "rf_detr")


@pytest.mark.parametrize("family", TWO_STAGE)
def test_two_stage_detrs_pick_their_queries_with_torch_topk(family):
    """index_ordered_topk patches the ``torch`` of the modelling modules that call ``torch.topk``: each two-stage
    family still does (when this fails, transformers picks its queries another way and the patch misses it)."""
    import importlib

    from training.compat.transformers import _selects_with_topk

    name = f"transformers.models.{family}.modeling_{family}"
    importlib.import_module(name)
    assert _selects_with_topk(name)


def test_index_ordered_topk_orders_ties_as_onnx_runtime_does(tmp_path):
    """Within the context a patched module's topk ranks rounded scores with ties by index, the order ONNX Runtime's
    TopK gives the exported graph; outside, the module's torch is torch again."""
    import onnxruntime as ort
    from transformers.models.rf_detr import modeling_rf_detr

    from training.compat.torch import TIE_QUANTUM
    from training.compat.transformers import index_ordered_topk

    scores = torch.rand(1, 500) * 0.5  # below the tied group
    scores[:, ::3] = 0.75
    scores[:, 1::7] = 0.75 + TIE_QUANTUM / 10  # float noise: the same score once rounded
    model = torch.nn.Sequential(_tiny_rf_detr_embeddings())

    class Pick(torch.nn.Module):
        def forward(self, x):
            with index_ordered_topk(model):
                values, indices = modeling_rf_detr.torch.topk(x, 60, dim=1)
            return values, indices

    with index_ordered_topk(model), index_ordered_topk(model):  # re-entrant
        assert modeling_rf_detr.torch is not torch and modeling_rf_detr.torch.nn is torch.nn
    assert modeling_rf_detr.torch is torch
    values, indices = Pick()(scores)
    tied = np.flatnonzero(np.abs(scores[0].numpy() - 0.75) < TIE_QUANTUM / 2)
    assert indices[0, : len(tied)].tolist() == tied.tolist()[:60]
    assert torch.equal(values, scores.gather(1, indices))
    torch.onnx.export(Pick(), (scores,), str(tmp_path / "pick.onnx"), opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "pick.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: scores.numpy()})
    np.testing.assert_array_equal(got[1], indices.numpy())
    np.testing.assert_array_equal(got[0], values.numpy())
    # OpenVINO's ONNX front end drops TopK's tie order; export.convert.stable_topk gives it back
    import openvino as ov

    from export.convert import stable_topk

    ir = ov.convert_model(str(tmp_path / "pick.onnx"))
    assert stable_topk(ir) == 1
    out = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(scores.numpy())
    np.testing.assert_array_equal(out[1], indices.numpy())


def test_rtdetr_picks_its_queries_through_private_grouped_topk():
    """ultralytics' RT-DETR decoder selects its queries with ``Detect._grouped_topk`` (called through the class);
    within ordered_query_selection() and only in its thread, that selection is index-ordered among rounded ties;
    outside, ultralytics' own is back."""
    import threading

    from ultralytics.nn.modules.head import Detect, RTDETRDecoder

    from training.compat.torch import TIE_QUANTUM

    assert "Detect._grouped_topk(" in inspect.getsource(RTDETRDecoder._get_decoder_input)
    own = Detect._grouped_topk
    scores = torch.zeros(2, 300)
    scores[:, 7::5] = 1.0 + TIE_QUANTUM / 10 * torch.rand(2, 59)  # tied once rounded, float noise apart
    seen_elsewhere = []
    with cu.ordered_query_selection(), cu.ordered_query_selection():  # re-entrant
        values, index = Detect._grouped_topk(scores, 20, 1)
        other = threading.Thread(target=lambda: seen_elsewhere.append(Detect._grouped_topk(scores, 20, 1)[1]))
        other.start()
        other.join()
    assert Detect._grouped_topk is own
    assert index.tolist() == [list(range(7, 107, 5))] * 2
    assert torch.equal(values, scores.gather(1, index))
    assert torch.equal(seen_elsewhere[0], own(scores, 20, 1)[1])  # another thread: ultralytics' own selection
    with pytest.raises(RuntimeError), cu.ordered_query_selection():
        raise RuntimeError("inside")
    assert Detect._grouped_topk is own


def test_export_mode_rtdetr_forward_selects_in_order_and_survives_a_deep_copy(monkeypatch):
    """export_mode binds an ordered forward to each RT-DETR decoder: a deep copy calls its own module, and its
    top-k selections (queries and detections) go through the index-ordered top-k."""
    import copy

    from ultralytics.nn.modules.head import Detect, RTDETRDecoder

    from training.compat import torch as ct

    decoder = RTDETRDecoder(nc=1, ch=(16, 16, 16), hd=16, nq=10, ndp=2, nh=2, ndl=1)
    model = torch.nn.Sequential(decoder).eval()
    cu.export_mode(model)
    twin = copy.deepcopy(model)[0]
    assert decoder.forward.__self__ is decoder and twin.forward.__self__ is twin  # each calls its own module
    calls = []
    ordered = ct.index_ordered_topk_values
    monkeypatch.setattr(ct, "index_ordered_topk_values", lambda *a, **k: calls.append(1) or ordered(*a, **k))
    own = Detect._grouped_topk
    with torch.no_grad():
        out = twin([torch.rand(1, 16, s, s) for s in (8, 4, 2)])
    assert out.shape == (1, 10, 6) and len(calls) == 2  # the queries, then the detections
    assert Detect._grouped_topk is own


# -- accelerate -------------------------------------------------------------------------------------------------
def test_accelerate_private_reset_state():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from training.compat.accelerate import reset_state

    assert _params(AcceleratorState._reset_state) == ["reset_partial_state"]
    assert _params(GradientState._reset_state) == []
    reset_state(partial=True)
    Accelerator(cpu=True)
    assert AcceleratorState._shared_state and GradientState._shared_state and PartialState._shared_state
    reset_state(partial=False)
    assert not AcceleratorState._shared_state and not GradientState._shared_state
    assert PartialState._shared_state  # a launcher's process group stays
    reset_state(partial=True)
    assert not PartialState._shared_state
    Accelerator(cpu=True, mixed_precision="bf16")  # a new run may change precision
    reset_state(partial=True)


# -- torch ------------------------------------------------------------------------------------------------------
def test_torch_private_pickle_scanner():
    from training.compat.torch import globals_in_pickle

    data = pickle.dumps({"x": fractions.Fraction(1, 3), "y": [1.0]}, protocol=2)
    assert globals_in_pickle(data) == {"fractions.Fraction"}
    with pytest.raises(Exception):  # noqa: B017  a damaged stream: whatever the scanner raises
        globals_in_pickle(b"\x80\x02c")


@pytest.mark.parametrize(
    "table",
    [
        # ultralytics' own lines ("%.6g," per value): ints, floats, exponents, a column of whole numbers
        "epoch,time,train/box_loss,metrics/mAP50(B),lr/pg0\n1,3.5,1.25,0,0.01\n2,7.25,1.0,0.125,1e-05\n",
        "epoch,time,val/box_loss\n1,3.5,nan\n2,7.25,inf\n",  # a diverged run
        "epoch,time,lr/pg0\n1,3.5,\n2,7,0.01\n",  # an empty cell
        "epoch,time\n",  # the header alone
        "epoch,time\n1,2,3\n",  # a torn line: more values than names
        "",
    ],
    ids=["ultralytics", "nan-inf", "empty-cell", "header-only", "ragged", "empty-file"],
)
def test_results_csv_read_without_polars_as_polars_reads_it(table, tmp_path, monkeypatch):
    """Our trainers read results.csv (the checkpoint's ``train_results``) with the stdlib: ultralytics' own
    ``read_results_csv`` imports polars, which slim GPU images lack; the dict, values and their types, is the one
    ultralytics' polars reading gives ({} where polars refuses the file)."""
    import sys
    import types

    from ultralytics.engine.trainer import BaseTrainer

    from training.backends.ultralytics_training import trainer_class

    pl = pytest.importorskip("polars")
    assert "import polars" in inspect.getsource(BaseTrainer.read_results_csv)
    csv = tmp_path / "results.csv"
    csv.write_text(table)
    trainer = types.SimpleNamespace(csv=csv)
    try:
        expected = pl.read_csv(csv.read_bytes(), infer_schema_length=None).to_dict(as_series=False)
    except Exception:  # as ultralytics' own reading: nothing stored
        expected = {}
    ours = trainer_class(cu.DetectionTrainer).read_results_csv
    monkeypatch.setitem(sys.modules, "polars", None)  # `import polars` now fails, as on such an image
    got = ours(trainer)
    assert got == expected or (_nan_equal(got, expected))
    assert {k: [type(v) for v in vs] for k, vs in got.items()} == {
        k: [type(v) for v in vs] for k, vs in expected.items()
    }
    assert ours(types.SimpleNamespace(csv=tmp_path / "missing.csv")) == {}


def _nan_equal(a: dict, b: dict) -> bool:
    same = lambda x, y: x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)  # noqa: E731
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) and all(map(same, a[k], b[k])) for k in a)
