"""The encoder's ``stages``: how coarse a map the keypoints are read from, kept through checkpoint and bundle."""
import numpy as np
import pytest
import torch

from dp_runtime.checkpoint import load_checkpoint
from dp_runtime.engine import load_bundle
from dp_runtime.errors import ConfigError
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.export.bundle import example_inputs
from dp_runtime.model import ResNet18GN
from dp_runtime.model.config import EncoderConfig
from dp_runtime.train import TrainConfig, train
from tests.helpers.synthetic import reaching_dataset, tiny_config


@pytest.mark.parametrize("stages,side", [(4, 2), (3, 4), (2, 8)])
def test_fewer_stages_read_keypoints_from_a_finer_map(stages, side):
    enc = ResNet18GN(base_width=8, pool="spatial_softmax", num_kp=4, feature_dim=8, stages=stages)
    seen = []
    enc.pool.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    enc(torch.zeros(1, 3, 64, 64))
    assert seen == [(side, side)]  # a 64 px wrist image: ResNet-18's 1/32 leaves 2x2 cells for the keypoints
    assert not any(k.startswith(f"layer{stages + 1}.") for k in enc.state_dict())


def test_stages_outside_resnet18_refused():
    with pytest.raises(ConfigError, match="encoder stages must be 2, 3 or 4"):
        tiny_config(encoder=EncoderConfig(base_width=8, pool="spatial_softmax", stages=5)).validate()


def test_a_two_stage_policy_exports_and_runs_as_trained(tmp_path):
    cfg = tiny_config(encoder=EncoderConfig(base_width=8, pool="spatial_softmax", num_kp=8, feature_dim=16, stages=2))
    ckpt = train(cfg, reaching_dataset(cfg, 64, seed=0), tmp_path / "s2.safetensors",
                 TrainConfig(steps=2, batch_size=16))
    policy = load_checkpoint(ckpt).policy
    assert policy.cfg.encoder.stages == 2 and not hasattr(policy.obs_encoder.key_model_map["camera"], "layer3")
    export_bundle(ckpt, tmp_path / "bundle", ExportOptions(seed=0, parity_samples=2))
    engine = load_bundle(tmp_path / "bundle", backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(5)
    obs = example_inputs(policy, 2, rng)
    noise = rng.standard_normal((2, 8, 2)).astype(np.float32)
    ref = policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise)).numpy()
    assert np.abs(engine.predict(obs, noise=noise).actions - ref).max() <= 1e-4
