"""Running an exported model (inference, below evaluation): the manifest reader and :class:`ExportedModel`
(``exported``), the ONNX Runtime / OpenVINO / TensorRT / PyTorch runners (``runtimes``), and a family's shared
pre- and post-processing (``families``). ``export/`` converts, quantizes and checks parity on top of these."""
