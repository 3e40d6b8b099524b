"""Export a policy trained by our trainer; the bundle must match the torch policy and refuse bad input."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from dp_runtime.checkpoint import load_checkpoint
from dp_runtime.engine import load_bundle
from dp_runtime.errors import BatchNormError, BundleError, ConfigError, InputError, ShapeError
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.export.bundle import example_inputs
from dp_runtime.model import DiffusionPolicy


def obs1(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {"camera": rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8),
            "state": rng.uniform(-0.5, 0.5, (2, 2)).astype(np.float32)}


def test_manifest_records_the_contract(tiny_bundle, tiny_ckpt):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["format_version"] == 4
    assert m["obs_interval_s"] == 0.1 and m["action"]["execute_start"] == 1 and m["action"]["execute_end"] == 5
    assert m["source"]["weights"] == "ema" and len(m["source"]["sha256"]) == 64
    assert m["ema"]["power"] == 0.75
    assert set(m["files"]) == {"encoder.onnx", "denoise_step.onnx", "encoder.pt", "denoise_step.pt",
                               "denoise_step_inpaint.onnx", "denoise_step_inpaint.pt"}  # exported with inpaint
    assert all(e["type"] == "GroupNorm" and not e["running_stats"] for e in m["norm_inventory"])
    parity = {g["format"]: g["max_abs_error"] for g in m["graphs"]}
    assert parity["onnx"] <= 1e-4
    assert parity["torchscript"] <= 1e-4
    # diffusers' DDIM walk for 100 train steps / 8 inference steps, final step to alpha 1.
    assert m["ddim"]["timesteps"] == [84, 72, 60, 48, 36, 24, 12, 0]
    assert m["ddim"]["prev_timesteps"][-1] < 0 and m["ddim"]["config"]["set_alpha_to_one"] is True
    assert m["observations"][0] == {"key": "camera", "kind": "image", "shape": [24, 24, 3], "dtype": "uint8",
                                    "layout": "HWC", "topic": "/camera/image_raw"}
    for name in m["files"]:
        if name.endswith(".onnx"):
            onnx.checker.check_model(str(tiny_bundle / name))


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_bundle_matches_torch_policy_and_seeds_repeat(tiny_bundle, tiny_ckpt, backend):
    engine = load_bundle(tiny_bundle, backend=backend, device="cpu")
    policy = load_checkpoint(tiny_ckpt).policy
    rng = np.random.default_rng(5)
    for _ in range(3):
        obs = example_inputs(policy, 2, rng)
        noise = rng.standard_normal((2, 8, 2)).astype(np.float32)
        ref = policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise)).numpy()
        got = engine.predict(obs, noise=noise)
        assert np.abs(got.actions - ref).max() <= 1e-4
        assert got.latency_s > 0
    o = obs1(policy.cfg)
    a, b = engine.predict(o, seed=7).actions, engine.predict(o, seed=7).actions
    c = engine.predict(o, seed=8).actions
    assert a.shape == (8, 2) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_both_backends_agree_with_each_other(tiny_bundle):
    o = obs1(None)
    a = load_bundle(tiny_bundle, backend="onnxruntime").predict(o, seed=1).actions
    b = load_bundle(tiny_bundle, backend="torchscript").predict(o, seed=1).actions
    assert np.abs(a - b).max() <= 1e-4


def test_step_count_is_a_runtime_choice(tiny_bundle, tiny_ckpt):
    engine = load_bundle(tiny_bundle, num_inference_steps=4)
    policy = load_checkpoint(tiny_ckpt).policy
    o = obs1(policy.cfg)
    noise = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    ref = policy.sample({k: torch.from_numpy(v[None]) for k, v in o.items()}, torch.from_numpy(noise[None]),
                        num_inference_steps=4).numpy()[0]
    assert np.abs(engine.predict(o, noise=noise).actions - ref).max() <= 1e-4


def test_bad_predict_inputs(tiny_bundle):
    engine = load_bundle(tiny_bundle, backend="onnxruntime")
    o = obs1(None)
    with pytest.raises(ShapeError, match="'camera'"):
        engine.predict({**o, "camera": o["camera"].astype(np.float32)})
    with pytest.raises(ShapeError, match="'camera'"):
        engine.predict({**o, "camera": o["camera"][:, :20]})
    with pytest.raises(ShapeError, match="'state'"):
        engine.predict({**o, "state": np.zeros((2, 3), np.float32)})
    with pytest.raises(ShapeError, match="missing"):
        engine.predict({"camera": o["camera"]})
    bad = o["state"].copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        engine.predict({**o, "state": bad})
    with pytest.raises(ShapeError, match="noise"):
        engine.predict(o, noise=np.zeros((4, 2), np.float32))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_tampered_and_missing_files_refused(bundle_copy):
    f = bundle_copy / "denoise_step.onnx"
    original = f.read_bytes()
    data = bytearray(original)
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="denoise_step.onnx sha256 mismatch"):
        load_bundle(bundle_copy)
    f.write_bytes(original)
    (bundle_copy / "encoder.pt").unlink()
    with pytest.raises(BundleError, match="encoder.pt"):
        load_bundle(bundle_copy, backend="torchscript")


def test_unknown_format_version_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle_copy)


def test_graph_without_manifest_refused(bundle_copy):
    with pytest.raises(BundleError, match="cannot prove"):
        load_bundle(bundle_copy / "encoder.onnx")
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(bundle_copy)


def test_manifest_inventory_with_running_stats_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["norm_inventory"].append({"name": "obs_encoder.x.bn1", "type": "BatchNorm2d", "running_stats": True})
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BatchNormError, match="obs_encoder.x.bn1"):
        load_bundle(bundle_copy)


def _rehash(bundle, name):
    from dp_runtime.digest import sha256_file
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"][name]["sha256"] = sha256_file(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_batchnorm_in_onnx_graph_refused_even_with_matching_hash(bundle_copy):
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    torch.onnx.export(bn, (torch.zeros(1, 3, 8, 8),), str(bundle_copy / "encoder.onnx"),
                      training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    _rehash(bundle_copy, "encoder.onnx")
    with pytest.raises(BatchNormError, match="ONNX graph encoder.onnx"):
        load_bundle(bundle_copy, backend="onnxruntime")


def test_batchnorm_in_torchscript_refused(bundle_copy):
    bn = torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval(),
                         torch.zeros(1, 3, 8, 8))
    bn.save(str(bundle_copy / "encoder.pt"))
    _rehash(bundle_copy, "encoder.pt")
    with pytest.raises(BatchNormError, match="TorchScript module encoder.pt"):
        load_bundle(bundle_copy, backend="torchscript")


def test_batchnorm_policy_refused_before_export(tmp_path, tiny_cfg):
    from dp_runtime.checkpoint.native import Checkpoint
    policy = DiffusionPolicy(tiny_cfg)
    policy.obs_encoder.key_model_map["camera"].layer1[0].bn2 = torch.nn.BatchNorm2d(8)
    ck = Checkpoint(policy=policy, config=tiny_cfg, weights="ema", source="bn.safetensors")
    with pytest.raises(BatchNormError, match="layer1.0.bn2"):
        export_bundle(ck, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_unsupported_export_options(tmp_path, tiny_ckpt):
    with pytest.raises(ConfigError, match="steps"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(steps=1000))
    with pytest.raises(ConfigError, match="formats"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(formats=("tflite",)))


def test_cli_inspect_and_export(tiny_bundle, tiny_ckpt, tmp_path, bundle_copy):
    r = subprocess.run([sys.executable, "-m", "dp_runtime.cli_entry", "dp-inspect", str(tiny_bundle)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "self-test" in r.stdout and "CPUExecutionProvider" in r.stdout
    sizes = {fmt: sum((tiny_bundle / f).stat().st_size for f in files) / 1e6 for fmt, files in (
        ("onnx", ("encoder.onnx", "denoise_step.onnx", "denoise_step_inpaint.onnx")),
        ("torchscript", ("encoder.pt", "denoise_step.pt", "denoise_step_inpaint.pt")))}
    assert f"size        onnx {sizes['onnx']:.1f} MB, torchscript {sizes['torchscript']:.1f} MB" in r.stdout
    (bundle_copy / "encoder.onnx").write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "dp_runtime.cli_entry", "dp-inspect", str(bundle_copy)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "sha256 mismatch" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dp_runtime.cli_entry", "dp-export", str(tiny_ckpt), "-o",
                        str(tmp_path / "cli_bundle"), "--formats", "onnx", "--parity-samples", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli_bundle" / "manifest.json").is_file()
    assert not (tmp_path / "cli_bundle" / "encoder.pt").exists()


def test_inspect_compares_step_counts_on_the_same_noise(tiny_bundle):
    from dp_runtime.engine.step_counts import compare_step_counts
    engine = load_bundle(tiny_bundle)
    reports = {r.steps: r for r in compare_step_counts(engine, [8, 4, 2], samples=2)}
    assert reports[8].max_abs_error < 1e-6  # the exported count against itself
    assert 0 < reports[4].max_abs_error < reports[2].max_abs_error + 1.0
    assert all(r.latency_ms > 0 for r in reports.values())
    with pytest.raises(ConfigError, match="num_inference_steps 500 must be in \\[1, 100\\]"):
        load_bundle(tiny_bundle, num_inference_steps=500)
    r = subprocess.run([sys.executable, "-m", "dp_runtime.cli_entry", "dp-inspect", str(tiny_bundle), "--steps", "4,2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 steps: max |diff|" in r.stdout and "2 steps" in r.stdout and "denoise_step_inpaint" in r.stdout


def test_no_graph_file_holds_weights_it_never_uses(tiny_bundle):
    """A traced TorchScript file keeps every weight its module holds: the encoder once carried the whole UNet and
    the step graph the FiLM maps and step encoder it runs precomputed. Each now holds what its graph computes
    with, so its parameters are the ONNX graph's (which drops unused initializers) give or take the constants."""
    import onnx
    for stem in ("encoder", "denoise_step", "denoise_step_inpaint"):
        ts = torch.jit.load(str(tiny_bundle / f"{stem}.pt"))
        held = sum(t.numel() for t in ts.state_dict().values())
        names = list(ts.state_dict())
        model = onnx.load(str(tiny_bundle / f"{stem}.onnx"))
        used = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
        assert not any("cond_encoder" in n or "diffusion_step_encoder" in n for n in names), stem
        assert held <= 1.1 * used + 64, (stem, held, used)
        assert not any(n.startswith("policy.model") for n in names), stem
