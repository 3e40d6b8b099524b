"""Bundle writer: ONNX + TorchScript + manifest, with the parity check."""
from .bundle import export_bundle

__all__ = ["export_bundle"]
