"""Bundle writer: ONNX + TorchScript + manifest, with the parity check."""
from .bundle import ExportOptions, export_bundle

__all__ = ["ExportOptions", "export_bundle"]
