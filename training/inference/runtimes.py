"""Runners: named numpy inputs in, list of numpy outputs out; one per runtime (PyTorch, ONNX Runtime, OpenVINO,
TensorRT). Each is imported lazily: a missing runtime is an :class:`Unavailable` with the reason, never a crash."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from training.cli import DataError, first_line


class Unavailable(RuntimeError):
    """This runtime cannot run here (package missing, no CUDA, CPU without the instruction set)."""


def _unloadable(path, what: str, e: Exception) -> DataError:
    # each runtime has its own exception types for a damaged file (onnxruntime's InvalidProtobuf / Fail,
    # OpenVINO's RuntimeError, TensorRT's None engine): one line naming the file instead
    return DataError(f"{path}: not a loadable {what} ({e.__class__.__name__}: {first_line(e)})")


class Runner:
    """One runtime's session over an exported graph: ``runner(feeds) -> outputs`` (numpy in, numpy out)."""

    #: where it runs
    device: str = "cpu"
    #: whether it takes the uint8 page (the graph converts it itself: OpenVINO's PrePostProcessor)
    u8_input: bool = False

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def timed(self, feeds: dict[str, np.ndarray]):
        """What the latency protocol times model-only: a closure running the graph on ``feeds``."""
        return lambda: self(feeds)


class TorchRunner(Runner):
    def __init__(self, family, device: str = "cpu"):
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise Unavailable("PyTorch CUDA: no CUDA device")
        self.family = family
        self.device = device
        family.module.to(device)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.family.torch_outputs(feeds)


class OrtRunner(Runner):
    def __init__(self, path: str | Path, provider: str = "CPUExecutionProvider", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise Unavailable(f"onnxruntime not installed ({e})") from None
        if provider not in ort.get_available_providers():
            raise Unavailable(f"ONNX Runtime {provider} not available (have {ort.get_available_providers()})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=[provider])
        except Exception as e:
            raise _unloadable(path, "ONNX model", e) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.device = "cuda" if provider.startswith("CUDA") else "cpu"

    def __call__(self, feeds):
        return self.session.run(None, {k: feeds[k] for k in self.inputs})

    def input_shapes(self) -> dict[str, list[int | None]]:
        """Each graph input's shape, None for a symbolic dimension."""
        return {
            i.name: [d if isinstance(d, int) else None for d in i.shape] for i in self.session.get_inputs()
        }


def tensorrt():
    """The ``tensorrt`` module, or :class:`Unavailable` without CUDA or the package."""
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("TensorRT: no CUDA device on this machine")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise Unavailable(f"TensorRT: the tensorrt package is not installed ({e})") from None
    return trt


def openvino_core():
    try:
        import openvino as ov
    except ImportError as e:
        raise Unavailable(f"openvino not installed ({e})") from None
    return ov.Core()


@functools.cache
def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (``FP32 BF16 INT8 ...``); empty without openvino.
    A fact of the machine, asked once (every OpenVINO runner and the CPU-path choice read it)."""
    try:
        return [str(c) for c in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Unavailable:
        return []


def bf16_supported() -> tuple[bool, str]:
    """Whether OpenVINO can run BF16 natively on this CPU (AVX512-BF16 or AMX), with the reason."""
    caps = cpu_capabilities()
    if not caps:
        return False, "openvino not installed"
    if "BF16" in caps:
        return True, "CPU reports BF16"
    return False, f"CPU has no native BF16 (OpenVINO capabilities: {caps}; needs AVX512-BF16 or AMX)"


def inference_precision(precision: str) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for a format's precision (``fp32`` / ``bf16`` / ``int8``).

    ``f32`` is explicit for FP32: on BF16-capable CPUs OpenVINO would otherwise pick bf16 for an "FP32" model.
    INT8 runs the operations NNCF left unquantized (the YOLO box decoding, concatenations, resizes) in BF16
    where the CPU has it natively (AMX / AVX512-BF16), FP32 elsewhere: on an AMX Xeon that keeps the whole
    graph off the FP32 path (the parity check of ``python -m export`` guards the accuracy).
    """
    if precision == "bf16":
        ok, why = bf16_supported()
        if not ok:
            raise Unavailable(f"OpenVINO BF16: {why}")
        return "bf16"
    if precision == "int8":
        return "bf16" if bf16_supported()[0] else "f32"
    return "f32"


def with_u8_input(model, conversion: dict):
    """The model behind OpenVINO's PrePostProcessor: it takes the letterboxed page as ``uint8 1xHxWx3`` and
    converts, scales and lays it out NCHW inside the graph (fused into the first convolution's reorder), so the
    host skips the float conversion and copies a quarter of the bytes."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    for i in range(len(model.inputs)):
        inp = ppp.input(i)
        inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        inp.model().set_layout(ov.Layout("NCHW"))
        steps = inp.preprocess().convert_element_type(ov.Type.f32)
        if any(conversion["mean"]):
            steps.mean([float(v) for v in conversion["mean"]])
        steps.scale([float(v) for v in conversion["scale"]])
    return ppp.build()


def port_name(port) -> str:
    """An OpenVINO input's name as the ONNX graph called it (the name the feeds use). A port can hold several
    names: where OpenVINO folds the graph's first operation into the input (RF-DETR's Cast to float), the input
    also takes that operation's tensor name, and ``get_any_name`` may return either (RF-DETR:
    ``/model/model/backbone/.../Cast_output_0``, not ``pixel_values``). The Parameter keeps the original name as
    its friendly name. (A port with no name at all, which an ONNX input cannot be, gets the friendly name, which
    the feeds could not use.)"""
    names = port.get_names()
    friendly = port.get_node().get_friendly_name()
    return friendly if friendly in names or not names else min(names, key=lambda n: ("/" in n, n))


class OpenVINORunner(Runner):
    """An OpenVINO IR on the CPU plugin. ``precision``: ``fp32`` / ``bf16`` / ``int8`` (the hint of
    :func:`inference_precision`); ``u8_input``: the family's ``graph_preprocessing`` (the runner then takes
    the uint8 page of ``preprocess_u8``), None for the float feeds of ``preprocess``.

    A model with symbolic input dimensions (``input_hw=dynamic``) is compiled once, as it is: a static copy
    per input shape (reshaped and compiled when a page of a new shape comes) was 4% faster on a YOLOv8s INT8 at
    640 x 512 (p50 104.1 vs 108.3 ms, interleaved, 2-core AVX2 EPYC) and costs a second's compile per new shape,
    which a folder of pages in many sizes would pay again and again."""

    def __init__(
        self,
        xml: str | Path,
        precision: str = "fp32",
        threads: int | None = None,
        u8_input: dict | None = None,
        profile: bool = False,
    ):
        core = openvino_core()
        self.config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": inference_precision(precision),
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.model = core.read_model(str(xml))
            if u8_input:
                self.model = with_u8_input(self.model, u8_input)
            self.compiled = core.compile_model(
                self.model, "CPU", {**self.config, "PERF_COUNT": bool(profile)}
            )
        except Exception as e:
            raise _unloadable(xml, "OpenVINO IR", e) from None
        self.u8_input = bool(u8_input)
        self.inputs = [port_name(i) for i in self.compiled.inputs]
        # each input's shape, None for a dynamic dimension
        self.shapes = {
            name: [d.get_length() if d.is_static else None for d in i.get_partial_shape()]
            for name, i in zip(self.inputs, self.compiled.inputs, strict=True)
        }
        self.request = self.compiled.create_infer_request()
        self.device = "cpu"

    def input_shapes(self) -> dict[str, list[int | None]]:
        return self.shapes

    def __call__(self, feeds):
        res = self.request.infer({k: feeds[k] for k in self.inputs})
        return [np.asarray(res[o]) for o in self.compiled.outputs]

    def layer_times(self, feeds, runs: int = 20) -> dict[str, float]:
        """OpenVINO's per-layer performance counters (a runner built with ``profile=True``): milliseconds per
        inference by kernel ``exec_type`` (e.g. ``brgconv_avx512_amx_i8``, ``jit_avx512_f32``), the mean over
        ``runs``. Which kernels run, and in which precision, is what shows whether INT8 runs end to end."""
        totals: dict[str, float] = {}
        for _ in range(runs):
            self(feeds)
            for info in self.request.get_profiling_info():
                ms = info.real_time.total_seconds() * 1000.0
                if ms > 0:
                    totals[info.exec_type] = totals.get(info.exec_type, 0.0) + ms / runs
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def throughput(self, feeds, seconds: float = 5.0, warmup: int = 4) -> dict[str, float]:
        """Batch scoring: pages/s with OpenVINO's THROUGHPUT hint, its optimal number of asynchronous requests
        (one per stream) kept busy on the same page for ``seconds``. Model only, like the model-only latency."""
        import openvino as ov

        config = {**self.config, "PERFORMANCE_HINT": "THROUGHPUT"}
        compiled = openvino_core().compile_model(self.model, "CPU", config)
        n_req = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, n_req)
        data = {k: feeds[k] for k in self.inputs}
        for _ in range(max(warmup, n_req)):
            queue.start_async(data)
        queue.wait_all()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            queue.start_async(data)  # blocks while every request is busy
            done += 1
        queue.wait_all()
        elapsed = time.perf_counter() - start
        return {
            "pages_per_s": done / elapsed,
            "requests": float(n_req),
            "streams": float(compiled.get_property("NUM_STREAMS")),
        }


class TensorRTRunner(Runner):
    """A serialized TensorRT engine run through torch CUDA tensors (no pycuda needed)."""

    def __init__(self, engine_path: str | Path):
        import torch

        trt = tensorrt()
        self.trt, self.torch = trt, torch
        logger = trt.Logger(trt.Logger.WARNING)
        with open(engine_path, "rb") as f:
            # engines never carry host code here: TensorRT refuses plugins serialised in an engine unless
            # `engine_host_code_allowed` is set, which we never do
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise _unloadable(engine_path, "TensorRT engine", RuntimeError("deserialisation failed"))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()
        self.device = "cuda"

    def _dtype(self, name: str):
        """The torch dtype of the engine's tensor ``name``."""
        return getattr(self.torch, np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name)

    def _bind(self, feeds) -> dict:
        """Device buffers for ``feeds`` (copied to the GPU) and the outputs, bound to the execution context."""
        bufs = {}
        for n in self.inputs:
            bufs[n] = self.torch.from_numpy(np.ascontiguousarray(feeds[n])).cuda().to(self._dtype(n))
            self.context.set_input_shape(n, tuple(bufs[n].shape))
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            bufs[n] = self.torch.empty(shape, dtype=self._dtype(n), device="cuda")
        for n, t in bufs.items():
            self.context.set_tensor_address(n, t.data_ptr())
        return bufs

    def _execute(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()

    def timed(self, feeds):
        """The engine alone for the latency protocol's model-only figure: ``feeds`` bound once on the GPU, each
        call executes and waits for the stream, with no host-device copy (end-to-end times :meth:`__call__`)."""
        bufs = self._bind(feeds)

        def run() -> None:
            self._execute()

        run.buffers = bufs  # kept alive with the closure: the context holds their raw addresses
        return run

    def __call__(self, feeds):
        bufs = self._bind(feeds)
        self._execute()
        return [bufs[n].float().cpu().numpy() for n in self.outputs]
