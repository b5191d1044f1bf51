"""Export (ONNX / OpenVINO / TensorRT) with parity checks: not built yet (tracked as its own issue).

Until then, an ultralytics detector exports through ``Detector.export(fmt, out_dir)``.
"""
