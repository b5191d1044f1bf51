"""Export (ONNX / OpenVINO FP32, BF16, INT8 / TensorRT) with a parity check per artefact, and the latency
benchmark: ``python -m export checkpoint=...``, ``python -m export.benchmark export_dir=...`` (see README.md)."""
