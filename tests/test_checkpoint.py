"""Our checkpoint format, diffusers EMAModel states, and the refusals."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dp_runtime.checkpoint import load_checkpoint, save_checkpoint
from dp_runtime.errors import BatchNormError, CheckpointError, ShapeError
from dp_runtime.model import DiffusionPolicy
from helpers.synthetic import tiny_config


def test_roundtrip_is_bit_identical_ema_by_default(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt)
    assert ck.weights == "ema"
    assert ck.ema["power"] == 0.75 and ck.ema["step"] > 0
    live = load_checkpoint(tiny_ckpt, weights="live")
    from safetensors.torch import load_file
    raw = load_file(str(tiny_ckpt))
    for k, v in ck.policy.state_dict().items():
        assert torch.equal(v, raw[f"ema.{k}"]), k
    # EMA and live weights really differ (the EMA is not a copy of the live model).
    diffs = [not torch.equal(a, b) for a, b in zip(ck.policy.parameters(), live.policy.parameters())]
    assert any(diffs)


def test_missing_and_corrupt_files(tmp_path, tiny_ckpt):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    data = tiny_ckpt.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="no 'dp_runtime' metadata"):
        load_checkpoint(foreign)


def test_checkpoint_without_ema_is_refused(tmp_path):
    cfg = tiny_config()
    path = save_checkpoint(tmp_path / "live_only.safetensors", DiffusionPolicy(cfg), None, {})
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(path)
    assert load_checkpoint(path, weights="live").weights == "live"


def test_config_weight_mismatch_names_key(tmp_path, tiny_ckpt):
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(tiny_ckpt), framework="pt") as f:
        meta = json.loads(f.metadata()["dp_runtime"])
    meta["config"]["unet"]["down_dims"] = [32, 96]
    bad = tmp_path / "mismatch.safetensors"
    save_file(load_file(str(tiny_ckpt)), str(bad), metadata={"dp_runtime": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="down_modules.1.0"):
        load_checkpoint(bad)


def test_batchnorm_checkpoint_is_refused(tmp_path):
    cfg = tiny_config()
    policy = DiffusionPolicy(cfg)
    # Put a BatchNorm back where the GroupNorm was, as a non-converted encoder would have.
    policy.obs_encoder.key_model_map["camera"].bn1 = torch.nn.BatchNorm2d(8)
    tensors = {f"ema.{k}": v for k, v in policy.state_dict().items()}
    meta = {"format": "dp_runtime.checkpoint", "format_version": 1, "config": cfg.to_dict(),
            "normalizer": policy.normalizer.stats(), "ema": {}}
    path = tmp_path / "bn.safetensors"
    save_file(tensors, str(path), metadata={"dp_runtime": json.dumps(meta)})
    with pytest.raises(BatchNormError, match="key_model_map.camera.bn1") as e:
        load_checkpoint(path)
    assert "EMA averages parameters" in str(e.value)
    with pytest.raises(BatchNormError):
        save_checkpoint(tmp_path / "x.safetensors", policy, None, {})


def test_wrong_observation_shapes_are_named(tiny_cfg):
    policy = DiffusionPolicy(tiny_cfg).eval()
    good = {"camera": torch.zeros(1, 2, 24, 24, 3, dtype=torch.uint8), "state": torch.zeros(1, 2, 2)}
    noise = torch.zeros(1, 8, 2)
    policy.sample(good, noise)
    with pytest.raises(ShapeError, match="'camera'"):
        policy.sample({**good, "camera": torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)}, noise)
    with pytest.raises(ShapeError, match="missing key"):
        policy.sample({"camera": good["camera"]}, noise)
    with pytest.raises(ShapeError, match="'state'"):
        policy.sample({**good, "state": torch.zeros(1, 2, 3)}, noise)
