"""Bundle reader/validator and inference backends."""
from .engine import PolicyEngine, Prediction, load_bundle
from .manifest import read_manifest

__all__ = ["PolicyEngine", "Prediction", "load_bundle", "read_manifest"]
