"""Shared fixtures: a tiny policy trained once per test session by our own trainer."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from helpers.synthetic import reaching_dataset, tiny_config
from dp_runtime.train import TrainConfig, train

torch.set_num_threads(2)
# Compiled packages (backend aoti) go to a cache of this session's own, never the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dp_test_cache_")
TINY_STEPS = int(os.environ.get("DP_TEST_TRAIN_STEPS", "600"))


@pytest.fixture(scope="session")
def tiny_cfg():
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg):
    return reaching_dataset(tiny_cfg, 512, seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_cfg, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return train(tiny_cfg, tiny_data, out, TrainConfig(steps=TINY_STEPS, batch_size=64, lr=3e-3))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_ckpt) -> Path:
    from dp_runtime.export import ExportOptions, export_bundle
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(tiny_ckpt, out, ExportOptions(seed=0, parity_samples=3, inpaint=True))
    return out


@pytest.fixture(scope="session")
def calibration_npz(tmp_path_factory, tiny_data) -> Path:
    """Observation histories from the training data, as dp-export --calibration reads them."""
    import numpy as np
    out = tmp_path_factory.mktemp("calib") / "calibration.npz"
    np.savez(out, camera=tiny_data["camera"][:64], state=tiny_data["state"][:64])
    return out


@pytest.fixture(scope="session")
def variant_bundle(tmp_path_factory, tiny_ckpt, calibration_npz) -> Path:
    """The tiny policy in every precision (int8 and bf16 measure above the default tolerance on this
    policy, so they are kept with force; the exporter's refusal is tested in test_precision.py)."""
    from dp_runtime.export import ExportOptions, export_bundle
    out = tmp_path_factory.mktemp("variants") / "tiny"
    export_bundle(tiny_ckpt, out, ExportOptions(seed=0, parity_samples=3, precisions="int8,fp16,bf16", force=True,
                                                inpaint=False,
                                                calibration=calibration_npz, calibration_samples=8))
    return out


@pytest.fixture(scope="session")
def compiled_bundle(tmp_path_factory, tiny_ckpt) -> Path:
    """ONNX and the compiled format (encoder, step and inpainting step programs; 2 DDIM steps), with inpainting.
    The export's parity check fills the compile cache."""
    from dp_runtime.export import ExportOptions, export_bundle
    out = tmp_path_factory.mktemp("compiled") / "tiny"
    export_bundle(tiny_ckpt, out, ExportOptions(formats=("onnx", "export"), steps=2, seed=0, parity_samples=2,
                                                inpaint=True))
    return out
