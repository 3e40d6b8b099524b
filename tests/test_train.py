"""The trainer: diffusers EMAModel with diffusion_policy's schedule, and real learning."""
import pytest
import torch

from dp_runtime.checkpoint import load_checkpoint
from dp_runtime.errors import ShapeError
from dp_runtime.model import DiffusionPolicy
from dp_runtime.train import TrainConfig, make_ema, train


def test_ema_schedule_matches_diffusion_policy():
    ema = make_ema([torch.nn.Parameter(torch.zeros(1))], power=0.75)
    for step in [0, 1, 2, 10, 100, 1000, 10_000]:
        # diffusion_policy EMAModel.get_decay: step' = max(0, step - 1); 0 at step' <= 0.
        s = max(0, step - 1)
        expected = 0.0 if s <= 0 else min(1 - (1 + s) ** -0.75, 0.9999)
        assert ema.get_decay(step) == pytest.approx(expected, abs=1e-12), step
    # Without warmup diffusers ignores power: the constant max decay would be used.
    assert ema.use_ema_warmup is True


def test_trained_policy_beats_untrained(tiny_ckpt, tiny_cfg, tiny_data):
    ck = load_checkpoint(tiny_ckpt)
    n = 64
    obs = {k: torch.from_numpy(tiny_data[k][:n]) for k in ("camera", "state")}
    target = torch.from_numpy(tiny_data["action"][:n])
    noise = torch.randn(n, tiny_cfg.horizon, tiny_cfg.action_dim, generator=torch.Generator().manual_seed(1))
    trained = ((ck.policy.sample(obs, noise) - target) ** 2).mean().item()
    torch.manual_seed(0)
    untrained_policy = DiffusionPolicy(tiny_cfg, ck.policy.normalizer.stats()).eval()
    untrained = ((untrained_policy.sample(obs, noise) - target) ** 2).mean().item()
    assert trained < 0.5 * untrained, (trained, untrained)


def test_dataset_shape_errors(tmp_path, tiny_cfg, tiny_data):
    bad = dict(tiny_data, action=tiny_data["action"][:, :4])
    with pytest.raises(ShapeError, match="'action'"):
        train(tiny_cfg, bad, tmp_path / "x.safetensors", TrainConfig(steps=1))
    bad = dict(tiny_data, state=tiny_data["state"][:10])
    with pytest.raises(ShapeError, match="'state'"):
        train(tiny_cfg, bad, tmp_path / "x.safetensors", TrainConfig(steps=1))
    bad = {k: v for k, v in tiny_data.items() if k != "camera"}
    with pytest.raises(ShapeError, match="missing"):
        train(tiny_cfg, bad, tmp_path / "x.safetensors", TrainConfig(steps=1))
