"""dp-export on diffusion_policy, robomimic and LeRobot checkpoints (layouts: tests/helpers/foreign_ckpts.py).

For each: the imported policy acts exactly like the policy whose weights were
written, the bundle matches the imported policy (parity <= 1e-4), the manifest
records where the weights came from, and BatchNorm, missing EMA weights,
unsupported policies, config/weight mismatches and truncated files are refused
with errors that say so.
"""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dp_runtime.checkpoint import detect_format, load_any
from dp_runtime.cli import export_main
from dp_runtime.engine import load_bundle
from dp_runtime.errors import BatchNormError, CheckpointError
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.export.bundle import example_inputs
from tests.helpers import foreign_ckpts as fc


def actions(policy, obs, noise):
    return policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise)).numpy()


def assert_same_policy(source, ck):
    """Same actions for the same observations and noise (relative: actions are in raw units)."""
    rng = np.random.default_rng(3)
    obs = example_inputs(source, 3, rng)
    noise = rng.standard_normal((3, source.cfg.horizon, source.cfg.action_dim)).astype(np.float32)
    want, got = actions(source, obs, noise), actions(ck.policy, obs, noise)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    return obs, noise


def export_and_check(ck, source_path, out, fmt, weights="ema"):
    bundle = export_bundle(ck, out, ExportOptions(parity_samples=2))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert max(g["max_abs_error"] for g in manifest["graphs"]) <= 1e-4
    assert manifest["source"]["format"] == fmt and manifest["source"]["weights"] == weights
    assert manifest["source"]["sha256"] == ck.sha256 and len(ck.sha256) == 64
    assert manifest["norm_inventory"] and not any(e["running_stats"] for e in manifest["norm_inventory"])
    # The bundle acts like the imported torch policy through the engine too.
    engine = load_bundle(bundle, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(5)
    obs = example_inputs(ck.policy, 1, rng)
    noise = rng.standard_normal((1, ck.config.horizon, ck.config.action_dim)).astype(np.float32)
    want = actions(ck.policy, obs, noise)
    assert np.abs(engine.predict(obs, noise=noise).actions - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    return manifest


# -- diffusion_policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("hybrid", [False, True], ids=["image_policy", "hybrid_policy"])
def test_diffusion_policy_ckpt_exports_with_parity(tmp_path, hybrid):
    source = fc.dp_source(hybrid)
    path = fc.write_dp(tmp_path / "latest.ckpt", source, hybrid)
    assert detect_format(path) == "diffusion_policy"
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_any(path)
    ck = load_any(path, trust_pickle=True)
    assert ck.weights == "ema" and ck.ema["power"] == 0.75
    # Hybrid: shape_meta order; image policy: rgb keys, then low-dim keys (each sorted).
    assert ck.config.feature_order == (["agent_pos", "image"] if hybrid else ["image", "agent_pos"])
    assert ck.config.images[0].crop == (4, 4, fc.CROP, fc.CROP)  # torchvision rounds (41-34)/2 = 3.5 up
    assert ck.config.n_action_steps == 4  # ${eval:'${n_action_steps}+${n_latency_steps}'} resolved
    assert ck.config.obs_interval_s == pytest.approx(0.1)  # task.env_runner.fps
    assert_same_policy(source, ck)
    export_and_check(ck, path, tmp_path / "bundle", "diffusion_policy")


def test_diffusion_policy_random_crop_false_means_no_crop(tmp_path):
    """diffusion_policy's MultiImageObsEncoder overwrites its CenterCrop when random_crop=False: no crop at all."""
    source = fc.dp_source(cropped=False)
    cfg = fc.dp_cfg(False)
    cfg.policy.obs_encoder.random_crop = False
    path = fc.write_dp(tmp_path / "latest.ckpt", source, cfg=cfg)
    ck = load_any(path, trust_pickle=True)
    assert ck.config.images[0].crop is None
    assert "random_crop=False" in ck.extra["crop"]
    assert_same_policy(source, ck)  # a baked-in centre crop would differ by ~0.2 normalized here
    cropped = fc.dp_source(cropped=True)
    cropped.load_state_dict(source.state_dict())
    assert np.abs(actions(cropped, *_obs_noise(source)) - actions(source, *_obs_noise(source))).max() > 1e-3
    export_and_check(ck, path, tmp_path / "bundle", "diffusion_policy")


def _obs_noise(policy, seed=3):
    rng = np.random.default_rng(seed)
    obs = example_inputs(policy, 3, rng)
    return obs, rng.standard_normal((3, policy.cfg.horizon, policy.cfg.action_dim)).astype(np.float32)


def test_dp_export_cli_needs_trust_and_records_source(tmp_path, capsys):
    path = fc.write_dp(tmp_path / "epoch=0100.ckpt", fc.dp_source())
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--parity-samples", "1"]) == 2
    assert "arbitrary code" in capsys.readouterr().err
    assert export_main([str(path), "-o", str(tmp_path / "b"), "--trust-pickle", "--parity-samples", "1",
                        "--formats", "onnx"]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["source"]["path"] == "epoch=0100.ckpt" and m["source"]["format"] == "diffusion_policy"


def test_dp_batchnorm_refused_with_the_fix(tmp_path):
    source = fc.dp_source()
    state = fc.add_batchnorm_buffers(fc.dp_state_dict(source, False), "obs_encoder.key_model_map.image")
    path = fc.write_dp(tmp_path / "bn.ckpt", source, state=state)
    with pytest.raises(BatchNormError) as e:
        load_any(path, trust_pickle=True)
    msg = str(e.value)
    assert "obs_encoder.key_model_map.image.bn1" in msg and "running statistics" in msg
    assert "use_group_norm=True" in msg and "share_rgb_model" in msg and "#151" in msg


def test_dp_without_ema_refused_unless_allowed(tmp_path, caplog):
    source = fc.dp_source()
    path = fc.write_dp(tmp_path / "noema.ckpt", source, ema=False)
    with pytest.raises(CheckpointError, match="no EMA weights.*--allow-non-ema"):
        load_any(path, trust_pickle=True)
    ck = load_any(path, trust_pickle=True, allow_non_ema=True)
    assert ck.weights == "live" and "LIVE" in caplog.text


def test_dp_unsupported_policy_mismatch_and_truncation(tmp_path):
    source = fc.dp_source()
    cfg = fc.dp_cfg(False, target="diffusion_policy.policy.diffusion_transformer_hybrid_image_policy."
                                  "DiffusionTransformerHybridImagePolicy")
    path = fc.write_dp(tmp_path / "tf.ckpt", source, cfg=cfg)
    with pytest.raises(CheckpointError, match="not supported: DiffusionTransformerHybridImagePolicy"):
        load_any(path, trust_pickle=True)
    cfg = fc.dp_cfg(False)
    cfg.policy.down_dims = [32, 128]  # config says 128 channels, weights have 64
    path = fc.write_dp(tmp_path / "mismatch.ckpt", source, cfg=cfg)
    with pytest.raises(CheckpointError,
                       match=r"'model\.mid_modules\.0\.blocks\.0\.block\.0\.weight' has shape \(64, 64, 3\).*disagree"):
        load_any(path, trust_pickle=True)
    good = fc.write_dp(tmp_path / "good.ckpt", source).read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_any(cut, trust_pickle=True)


# -- robomimic -----------------------------------------------------------------------------------

def test_robomimic_pth_exports_with_parity(tmp_path):
    source = fc.rm_source()
    path = fc.write_robomimic(tmp_path / "model_epoch_600.pth", source)
    assert detect_format(path) == "robomimic"
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_any(path)
    ck = load_any(path, trust_pickle=True)
    assert ck.config.images[0].crop == (3, 3, fc.CROP, fc.CROP)  # robomimic floors (41-34)/2
    assert ck.config.unet.n_groups == 8 and ck.config.unet.down_dims == (32, 64)
    # raw = scale * normalized + offset per action key, concatenated in train.action_keys order
    assert ck.policy.normalizer.params["action"].scale.tolist() == [2.0, 4.0]
    assert_same_policy(source, ck)
    export_and_check(ck, path, tmp_path / "bundle", "robomimic")


def test_ddpm_trained_policies_export_with_at_most_16_ddim_steps(tmp_path):
    """The same rule in every importer: DDPM-trained -> DDIM with <= 16 steps; DDIM-trained keep their count."""
    source = fc.rm_source()
    ddpm = load_any(fc.write_robomimic(tmp_path / "ddpm.pth", source, ddim=False), trust_pickle=True)
    assert ddpm.config.num_inference_steps == 16  # robomimic's default DDPM config asks for 100
    ddim = load_any(fc.write_robomimic(tmp_path / "ddim.pth", source), trust_pickle=True)
    assert ddim.config.num_inference_steps == 8
    lr = fc.write_lerobot(tmp_path / "lr_ema", fc.lr_source(), config=fc.lr_config(noise_scheduler_type="DDPM", num_inference_steps=None))
    assert load_any(lr).config.num_inference_steps == 16  # LeRobot DDPM default: the 100-step chain


def test_robomimic_refusals(tmp_path):
    source = fc.rm_source()
    state = fc.add_batchnorm_buffers(fc.rm_state_dict(source),
                                     "policy.obs_encoder.nets.obs.obs_nets.agentview_image.backbone")
    with pytest.raises(BatchNormError, match=r"obs_nets\.agentview_image\.backbone\.nets\.1 .*GroupNorm"):
        load_any(fc.write_robomimic(tmp_path / "bn.pth", source, state=state), trust_pickle=True)
    with pytest.raises(CheckpointError, match="no EMA weights.*--allow-non-ema"):
        load_any(fc.write_robomimic(tmp_path / "noema.pth", source, ema=False), trust_pickle=True)
    with pytest.raises(CheckpointError, match="not supported: robomimic algo 'bc'"):
        load_any(fc.write_robomimic(tmp_path / "bc.pth", source, algo_name="bc"), trust_pickle=True)
    state = fc.rm_state_dict(source)
    state["policy.obs_encoder.nets.obs.obs_nets.agentview_image.nets.3.weight"] = torch.zeros(16, 12)
    with pytest.raises(CheckpointError, match=r"obs_nets\.agentview_image\.nets\.3\.weight.*\(16, 12\)"):
        load_any(fc.write_robomimic(tmp_path / "mm.pth", source, state=state), trust_pickle=True)
    data = fc.write_robomimic(tmp_path / "ok.pth", source).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-4096])
    with pytest.raises(CheckpointError, match="truncated"):
        load_any(tmp_path / "cut.pth", trust_pickle=True)


# -- LeRobot -------------------------------------------------------------------------------------

def lerobot_features(directory, obs, resize=None):
    """LeRobot's own encoding written out from modeling_diffusion.py, on its raw files: normalize, resize
    (torchvision Resize on a tensor = antialiased bilinear interpolate), centre-crop, backbone, softmax
    attention @ pos_grid, Linear, ReLU; state first, then the camera."""
    from safetensors.torch import load_file
    from dp_runtime.model.encoder import ResNet18GN
    w = load_file(str(directory / "model.safetensors"))
    stats = load_file(str(directory / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    net = ResNet18GN(base_width=8)
    backbone = torch.nn.Sequential(*list(net.children())[:8])
    backbone.load_state_dict({k[len("diffusion.rgb_encoder.backbone."):]: v for k, v in w.items()
                              if k.startswith("diffusion.rgb_encoder.backbone.")})
    img = torch.from_numpy(obs["image"]).flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
    img = (img - stats["observation.image.mean"]) / (stats["observation.image.std"] + 1e-8)
    if resize:
        img = F.interpolate(img, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
    top = int(round(((resize or fc.IMG) - fc.CROP) / 2.0))
    img = img[:, :, top:top + fc.CROP, top:top + fc.CROP]
    fmap = F.conv2d(backbone(img), w["diffusion.rgb_encoder.pool.nets.weight"],
                    w["diffusion.rgb_encoder.pool.nets.bias"])
    attn = torch.softmax(fmap.flatten(2).reshape(-1, fmap.shape[2] * fmap.shape[3]), dim=-1)
    kp = (attn @ w["diffusion.rgb_encoder.pool.pos_grid"]).reshape(img.shape[0], -1)
    feat = torch.relu(F.linear(kp, w["diffusion.rgb_encoder.out.weight"], w["diffusion.rgb_encoder.out.bias"]))
    state = torch.from_numpy(obs["state"]).flatten(0, 1)
    lo, hi = stats["observation.state.min"], stats["observation.state.max"]
    state = 2 * (state - lo) / (hi - lo) - 1
    b = obs["state"].shape[0]
    return torch.cat([state, feat], dim=-1).reshape(b, -1)


def test_lerobot_dir_exports_with_parity(tmp_path):
    source = fc.lr_source()
    directory = fc.write_lerobot(tmp_path / "pretrained_model_ema", source)
    assert detect_format(directory) == "lerobot"
    ck = load_any(directory)  # safetensors + JSON: no pickle, no opt-in needed
    assert load_any(directory / "model.safetensors").source == str(directory)
    assert ck.weights == "ema"
    assert [s.key for s in ck.config.images] == ["image"] and ck.config.low_dims[0].key == "state"
    assert ck.extra["lerobot_features"]["state"] == "observation.state"
    obs, _ = assert_same_policy(source, ck)
    with torch.no_grad():
        ours = ck.policy.encode({k: torch.from_numpy(v) for k, v in obs.items()})
    assert torch.allclose(ours, lerobot_features(directory, obs), atol=1e-5)
    manifest = export_and_check(ck, directory, tmp_path / "bundle", "lerobot")
    assert manifest["source"]["details"]["lerobot_features"]["image"] == "observation.image"


def test_lerobot_resize_then_crop(tmp_path):
    """LeRobot 0.6 resize_shape: resized (antialiased bilinear), then centre-cropped, inside the bundle."""
    source = fc.lr_source(resize=36)
    directory = fc.write_lerobot(tmp_path / "resized_ema", source, config=fc.lr_config(resize_shape=[36, 36]))
    ck = load_any(directory)
    assert ck.config.images[0].resize == (36, 36) and ck.config.images[0].crop == (1, 1, fc.CROP, fc.CROP)
    obs, _ = assert_same_policy(source, ck)
    with torch.no_grad():
        ours = ck.policy.encode({k: torch.from_numpy(v) for k, v in obs.items()})
    assert torch.allclose(ours, lerobot_features(directory, obs, resize=36), atol=1e-5)
    without = lerobot_features(directory, obs)  # the resize matters: skipping it changes the features
    assert not torch.allclose(ours, without, atol=1e-2)
    export_and_check(ck, directory, tmp_path / "bundle", "lerobot")


EE_NAMES = ["ee.x", "ee.y", "ee.z", "ee.wx", "ee.wy", "ee.wz", "ee.gripper_pos"]


def lerobot_info(state_names, action_names) -> dict:
    """A LeRobot dataset's meta/info.json (v3 layout): images, then the low-dim features with their names."""
    return {"codebase_version": "v3.0", "fps": 30, "features": {
        "observation.image": {"dtype": "video", "shape": [fc.IMG, fc.IMG, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": state_names},
        "action": {"dtype": "float32", "shape": [len(action_names)], "names": action_names},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None}}}


def test_lerobot_ee_names_give_the_layout(tmp_path, capsys):
    """LeRobot's end-effector features (its kinematics processors: ee.x ee.y ee.z, the rotation vector ee.wx
    ee.wy ee.wz, ee.gripper_pos) named in the dataset's meta/info.json: dp-export --layout reads the pose, the
    rotation representation and the gripper from the names, and the action names with them."""
    source = fc.lr_source(dim=7)
    directory = fc.write_lerobot(tmp_path / "pretrained_model_ema", source)
    info = tmp_path / "info.json"
    info.write_text(json.dumps(lerobot_info(EE_NAMES, EE_NAMES)))
    assert export_main([str(directory), "-o", str(tmp_path / "b"), "--formats", "onnx", "--no-inpaint",
                        "--parity-samples", "1", "--layout", str(info)]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    want = [{"kind": "position", "size": 3, "axes": "xyz"},
            {"kind": "rotation", "size": 3, "representation": "axis_angle"}, {"kind": "gripper", "size": 1}]
    assert manifest["action"]["segments"] == want and manifest["action"]["names"] == EE_NAMES
    assert {o["key"]: o.get("segments") for o in manifest["observations"]}["state"] == want
    # older datasets wrap the names ({"motors": [...]}); joints beside the pose keep their names
    mixed = ["shoulder_pan.pos", "ee.x", "ee.y", "ee.z", "ee.wx", "ee.wy", "ee.wz"]
    old = lerobot_info(mixed, EE_NAMES)
    old["features"]["observation.state"]["names"] = {"motors": mixed}
    info.write_text(json.dumps(old))
    assert export_main([str(directory), "-o", str(tmp_path / "c"), "--formats", "onnx", "--no-inpaint",
                        "--parity-samples", "1", "--layout", str(info)]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert {o["key"]: o.get("segments") for o in manifest["observations"]}["state"] == [
        {"kind": "joints", "size": 1, "names": ["shoulder_pan.pos"]}, *want[:2]]
    # joint names only: nothing to read (joint values need no layout), said so; a wrong count is refused
    capsys.readouterr()
    info.write_text(json.dumps(lerobot_info([f"j{i}.pos" for i in range(7)], [f"j{i}.pos" for i in range(7)])))
    assert export_main([str(directory), "-o", str(tmp_path / "d"), "--layout", str(info)]) != 0
    assert "hold no end-effector pose" in capsys.readouterr().err
    info.write_text(json.dumps(lerobot_info(EE_NAMES, EE_NAMES[:6])))
    assert export_main([str(directory), "-o", str(tmp_path / "d"), "--layout", str(info)]) != 0
    assert "6 action names, the policy's action has 7" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_lerobot_two_cameras_separate_encoders(tmp_path):
    cams = fc.TWO_CAMERAS
    source = fc.lr_source(cams, separate=True)
    directory = fc.write_lerobot(tmp_path / "pretrained_model_ema", source, config=fc.lr_config(cams, separate=True),
                                 cameras=cams)
    ck = load_any(directory)
    assert ck.config.feature_order == ["state", "images_top", "images_wrist"]
    assert not ck.config.encoder.share
    assert_same_policy(source, ck)
    export_and_check(ck, directory, tmp_path / "bundle", "lerobot")


def test_lerobot_refusals(tmp_path):
    source = fc.lr_source()
    live = fc.write_lerobot(tmp_path / "pretrained_model", source)
    with pytest.raises(CheckpointError, match="LeRobot trains without EMA.*--allow-non-ema"):
        load_any(live)
    assert load_any(live, allow_non_ema=True).weights == "live"

    bn = fc.add_batchnorm_buffers(fc.lr_state_dict(source), "diffusion.rgb_encoder.backbone")
    d = fc.write_lerobot(tmp_path / "bn_ema", source, state=bn)
    with pytest.raises(BatchNormError, match=r"diffusion\.rgb_encoder\.backbone\.1 .*use_group_norm=True") as e:
        load_any(d)
    # LeRobot has no EMA: the refusal says why the rule applies to it, not the EMA mismatch.
    assert "LeRobot trains without EMA" in str(e.value) and "EMA averages parameters" not in str(e.value)

    d = fc.write_lerobot(tmp_path / "act_ema", source, config=fc.lr_config(type="act"))
    with pytest.raises(CheckpointError, match="not supported: LeRobot policy type 'act'"):
        load_any(d)

    d = fc.write_lerobot(tmp_path / "mm_ema", source, config=fc.lr_config(down_dims=[32, 96]))
    with pytest.raises(CheckpointError, match=r"'diffusion\.unet\.mid_modules\.0\.conv1\.block\.0\.weight' has shape"):
        load_any(d)

    d = tmp_path / "cut_ema"
    shutil.copytree(fc.write_lerobot(tmp_path / "ok_ema", source), d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_any(d)


def test_robomimic_diffusers_shadow_params_ema(tmp_path):
    """Newer robomimic serializes diffusers' EMAModel.state_dict(): shadow_params in nets.parameters() order."""
    from diffusers.training_utils import EMAModel
    source = fc.rm_source()
    state = fc.rm_state_dict(source)
    nets = fc.as_module(state)  # a module with robomimic's names, shared VisualCore modules included
    ema = EMAModel(nets.parameters(), power=0.75, use_ema_warmup=True)
    path = fc.write_robomimic(tmp_path / "shadow.pth", source, state=state, ema_state=ema.state_dict())
    ck = load_any(path, trust_pickle=True)
    assert ck.weights == "ema"
    assert_same_policy(source, ck)


def test_lerobot_files_written_by_lerobot_itself(tmp_path):
    """config.json, processor files and the weight names/shapes of a checkpoint LeRobot 0.4.4 wrote itself
    (DiffusionPolicy.save_pretrained + make_diffusion_pre_post_processors; 2 cameras 96x96, crop 83).
    Our LeRobot-layout writer must produce exactly its weight names and shapes; its config (which has no
    "type" field) and stats must import as LeRobot computes them."""
    from pathlib import Path
    from safetensors.torch import load_file
    from dp_runtime.model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig, UnetConfig
    fixture = Path(__file__).parent / "fixtures" / "lerobot_0.4.4_diffusion"
    keys = [fc.lr_key(c) for c in fc.TWO_CAMERAS]
    cfg = PolicyConfig(images=[ImageSpec(k, (96, 96, 3), crop=(6, 6, 83, 83)) for k in keys],
                       low_dims=[LowDimSpec("state", 2)], action_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8,
                       num_inference_steps=10, image_range="mean_std", obs_order=["state", *keys],
                       encoder=EncoderConfig(base_width=64, pool="spatial_softmax", num_kp=32, feature_dim=64,
                                             fc_relu=True),
                       unet=UnetConfig(down_dims=(64, 128, 256), diffusion_step_embed_dim=128))
    state = fc.lr_state_dict(DiffusionPolicy(cfg))
    real = json.loads((fixture / "model_keys.json").read_text())
    assert {k: list(v.shape) for k, v in state.items()} == real

    directory = tmp_path / "pretrained_model"
    shutil.copytree(fixture, directory)
    (directory / "model_keys.json").unlink()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    ck = load_any(directory, allow_non_ema=True)
    assert ck.config.images[0].crop == (6, 6, 83, 83)  # torchvision: int(round(6.5)) == 6
    assert ck.config.feature_order == ["state", "images_top", "images_wrist"]
    assert ck.config.num_inference_steps == 10 and ck.config.scheduler["clip_sample_range"] == 1.0
    stats = load_file(str(fixture / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    lo, hi = stats["observation.state.min"].double(), stats["observation.state.max"].double()
    x = torch.tensor([[100.0, 7.0]], dtype=torch.float64)
    want = 2 * (x - lo) / (hi - lo) - 1
    got = ck.policy.normalizer.normalize("state", x.float())
    assert torch.allclose(got.double(), want, atol=1e-6)
    pre = ck.policy.obs_encoder.preprocess["images_wrist"]
    assert torch.allclose(pre.mean.flatten(), stats["observation.images.wrist.mean"].flatten())
    assert torch.allclose(pre.std.flatten(), stats["observation.images.wrist.std"].flatten() + 1e-8)


def test_robomimic_encoder_names_from_robomimic_itself(tmp_path):
    """Weight names/shapes of robomimic 0.3.0's own ObservationGroupEncoder (2 cameras 84x84, crop 75, 32
    keypoints, 64 features, GroupNorm) must be what our robomimic-layout writer produces and must import."""
    from pathlib import Path
    from dp_runtime.model import DiffusionPolicy, EncoderConfig, ImageSpec, LowDimSpec, PolicyConfig
    fixture = json.loads((Path(__file__).parent / "fixtures" / "robomimic_0.3.0_encoder" / "state_keys.json")
                         .read_text())
    cams = ["agentview_image", "robot0_eye_in_hand_image"]
    cfg = PolicyConfig(images=[ImageSpec(c, (84, 84, 3), crop=(4, 4, 75, 75)) for c in cams],
                       low_dims=[LowDimSpec("robot0_eef_pos", 3)], action_dim=2, horizon=8, n_obs_steps=2,
                       n_action_steps=4, num_inference_steps=8, image_range="zero_one",
                       obs_order=list(fixture["all_shapes"]),
                       encoder=EncoderConfig(base_width=64, pool="spatial_softmax", num_kp=32, feature_dim=64,
                                             fc_relu=True), unet=fc.rm_source().cfg.unet)
    source = fc.randomize(DiffusionPolicy(cfg), 1)
    sd = source.state_dict()
    ours = {}
    for cam in cams:
        ours.update(fc._visual_core(sd, f"obs_encoder.key_model_map.{cam}",
                                    f"policy.obs_encoder.nets.obs.obs_nets.{cam}", (75, 75)))
    assert {k: list(v.shape) for k, v in ours.items()} == fixture["keys"]
    ours.update({"policy.noise_pred_net." + k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")})
    path = tmp_path / "model.pth"
    torch.save({"model": {"nets": ours, "ema": ours}, "algo_name": "diffusion_policy",
                "config": json.dumps({"algo_name": "diffusion_policy", "algo": {
                    "horizon": {"observation_horizon": 2, "action_horizon": 4, "prediction_horizon": 8},
                    "ddim": {"enabled": True, "num_train_timesteps": 100, "num_inference_timesteps": 8}},
                    "observation": {"modalities": {"obs": {"rgb": cams, "low_dim": ["robot0_eef_pos"]}},
                                    "encoder": {"rgb": {"obs_randomizer_class": "CropRandomizer",
                                                        "obs_randomizer_kwargs": {"crop_height": 75,
                                                                                  "crop_width": 75}}}}}),
                "shape_metadata": {"ac_dim": 2, "all_shapes": fixture["all_shapes"]}}, path)
    ck = load_any(path, trust_pickle=True)
    assert ck.config.images[0].crop == (4, 4, 75, 75)  # robomimic: int((84 - 75) / 2) == 4
    assert ck.config.feature_order == ["agentview_image", "robot0_eef_pos", "robot0_eye_in_hand_image"]
    assert ck.config.encoder == cfg.encoder
    assert_same_policy(source, ck)


def test_omegaconf_interpolations_resolve_without_eval():
    from dp_runtime.checkpoint.pickled import resolve
    from dp_runtime.errors import ConfigError
    root = {"n": 8, "lat": 2, "task": {"fps": 10}, "p": {"steps": "${eval:'${n}+${lat}*2'}", "name": "run_${n}",
                                                          "fps": "${task.fps}", "bad": "${nowhere.x}",
                                                          "code": "${eval:'__import__(\"os\").getcwd()'}"}}
    assert resolve(root, root["p"]["steps"]) == 12
    assert resolve(root, root["p"]["name"]) == "run_8"
    assert resolve(root, root["p"]["fps"]) == 10
    with pytest.raises(ConfigError, match="nowhere.x"):
        resolve(root, root["p"]["bad"])
    with pytest.raises(ConfigError, match="unsupported expression"):
        resolve(root, root["p"]["code"])  # the eval resolver's arithmetic only: never code


def test_batchnorm_refusal_is_short_names_the_framework_fix_and_comes_before_the_live_warning(tmp_path, caplog):
    """A LeRobot user with a BatchNorm backbone (trained without EMA, exported with --allow-non-ema) reads two
    lines: how many layers (the first few named), LeRobot's own fix, why; and no LIVE-weights warning first."""
    source = fc.lr_source()
    bn = fc.add_batchnorm_buffers(fc.lr_state_dict(source), "diffusion.rgb_encoder.backbone")
    d = fc.write_lerobot(tmp_path / "pretrained_model", source, state=bn)
    with caplog.at_level("INFO"), pytest.raises(BatchNormError) as e:
        load_any(d, allow_non_ema=True)
    msg = str(e.value)
    lines = msg.splitlines()
    n = len(e.value.layers)
    assert n > 3 and len(lines) == 2 and f"{n} layer(s) keep running statistics" in lines[0]
    assert f"and {n - 3} more" in lines[0] and "num_batches_tracked" not in msg
    assert "Fix: Retrain with use_group_norm=True" in lines[0] and "replace_bn_with_gn" not in msg
    assert lines[1].startswith("Why: LeRobot trains without EMA")
    assert "LIVE" not in caplog.text  # refused before any export warning


def test_ddpm_trained_checkpoint_says_its_ddim_step_count(tmp_path, caplog):
    path = fc.write_dp(tmp_path / "ddpm.ckpt", fc.dp_source())
    with caplog.at_level("INFO"):
        ck = load_any(path, trust_pickle=True)
    assert re.search(rf"trained with DDPM, \d+ steps; the bundle samples with DDIM at {ck.config.num_inference_steps} "
                     r"steps by default \(dp-export --steps N to change\)", caplog.text), caplog.text


def test_dp_lowdim_policy_exports_exactly(tmp_path):
    """DiffusionUnetLowdimPolicy (PushT / robomimic lowdim tasks): one ``obs`` vector as the global condition."""
    source = fc.dp_lowdim_source()
    path = fc.write_dp(tmp_path / "lowdim.ckpt", source, state=fc.dp_lowdim_state_dict(source),
                       cfg=fc.dp_lowdim_cfg())
    ck = load_any(path, trust_pickle=True)
    assert [s.key for s in ck.config.low_dims] == ["obs"] and not ck.config.images
    assert ck.config.action_slice == (1, 5)  # oa_step_convention: from n_obs_steps - 1
    assert_same_policy(source, ck)
    export_and_check(ck, path, tmp_path / "bundle", "diffusion_policy")


@pytest.mark.parametrize("over, words", [
    ({"obs_as_local_cond": True, "obs_as_global_cond": False}, "obs_as_local_cond=True (local conditioning"),
    ({"obs_as_global_cond": False}, "obs_as_global_cond=False (inpainting)"),
    ({"pred_action_steps_only": True}, "pred_action_steps_only=True"),
    ({"oa_step_convention": False}, "oa_step_convention=False"),
])
def test_dp_lowdim_settings_that_cannot_export_exactly_are_refused_by_name(tmp_path, over, words):
    source = fc.dp_lowdim_source()
    path = fc.write_dp(tmp_path / "lowdim.ckpt", source, state=fc.dp_lowdim_state_dict(source),
                       cfg=fc.dp_lowdim_cfg(**over))
    with pytest.raises(CheckpointError, match=re.escape(words)):
        load_any(path, trust_pickle=True)
