"""Precision variants: measured at export, refused above tolerance, chosen per device at load."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from dp_runtime.checkpoint import load_any
from dp_runtime.engine import PolicyEngine, load_bundle, read_manifest
from dp_runtime.engine.variants import choose_graphs
from dp_runtime.errors import BundleError, ConfigError, ParityError
from dp_runtime.export import ExportOptions, export_bundle
from dp_runtime.export.bundle import check_observations, open_backend
from dp_runtime.export.calibration import calibration_observations
from dp_runtime.precision import cpu_flags, supported_on
from dp_runtime.spec import GraphSet


def test_every_precision_exported_and_measured(variant_bundle, tiny_ckpt):
    spec = read_manifest(variant_bundle)
    names = {g.name for g in spec.graphs}
    assert names == {"onnx-fp32", "torchscript-fp32", "onnx-int8", "onnx-fp16", "torchscript-fp16",
                     "torchscript-bf16"}
    for g in spec.graphs:
        assert g.samples == 16 + 8  # random observations + calibration observations
        assert 0 < g.p99_abs_error <= g.max_abs_error
        assert g.latency_ms > 0 and g.latency_device
        if g.precision == "fp32":
            assert g.max_abs_error < 1e-4 and g.tolerance == 1e-4 and not g.forced
        else:
            assert g.tolerance == 0.01 and g.forced == (g.max_abs_error > 0.01)
            assert g.encoder in {"encoder.onnx", "encoder.pt"}  # variants share the fp32 encoder
            assert f".{g.precision}." in g.step
    # the reduced variants really are reduced: bigger errors than fp32; int8 holds every UNet Conv1d as
    # an 8-bit MatMulNBits and no fp32 Conv is left
    fp32 = spec.graph_set("onnx")
    assert spec.graph_set("onnx", "int8").max_abs_error > 100 * fp32.max_abs_error
    ops = Counter(n.op_type for n in onnx.load(str(variant_bundle / "denoise_step.int8.onnx")).graph.node)
    convs = [m for m in load_any(tiny_ckpt).policy.model.modules() if type(m) is torch.nn.Conv1d]
    assert ops["MatMulNBits"] == len(convs) and ops["Conv"] == 0, ops


def test_recorded_errors_are_recomputed(variant_bundle, tiny_ckpt, calibration_npz):
    """Every variant's recorded max and p99 equal a fresh run against the torch policy on the same inputs."""
    spec = read_manifest(variant_bundle)
    policy = load_any(tiny_ckpt).policy.eval()
    calib = calibration_observations(calibration_npz, spec.policy, 8, seed=0)
    observations = check_observations(policy, 16, 0, calib)
    rng = np.random.default_rng(0)  # the exporter's noise stream for the same seed
    noises = [rng.standard_normal((1, spec.policy.horizon, spec.policy.action.dim)).astype(np.float32)
              for _ in observations]
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    for g in spec.graphs:
        files = {"encoder": variant_bundle / g.encoder, "step": variant_bundle / g.step}
        engine = PolicyEngine(spec.policy, spec.ddim, open_backend(g.format, files))
        errors = []
        for obs, noise in zip(observations, noises):
            with torch.no_grad():
                ref = policy.sample({k: torch.from_numpy(v) for k, v in obs.items()}, torch.from_numpy(noise)).numpy()
            errors.append(float((np.abs(engine.predict(obs, noise=noise).actions - ref) * scale).max()))
        assert max(errors) == pytest.approx(g.max_abs_error, rel=1e-3, abs=1e-6), g.name
        assert float(np.percentile(errors, 99)) == pytest.approx(g.p99_abs_error, rel=1e-3, abs=1e-6), g.name


def test_variant_above_tolerance_refused_unless_forced(tmp_path, tiny_ckpt, variant_bundle):
    recorded = read_manifest(variant_bundle).graph_set("onnx", "int8").max_abs_error
    tol = recorded / 2
    with pytest.raises(ParityError, match=r"onnx-int8: max action error .* exceeds the tolerance") as e:
        export_bundle(tiny_ckpt, tmp_path / "b", ExportOptions(formats=("onnx",), precisions="int8",
                                                               precision_tolerance=tol))
    assert f"{recorded:.4f}" in str(e.value)  # the measured error, the same as the forced export recorded
    assert not (tmp_path / "b").exists()
    out = export_bundle(tiny_ckpt, tmp_path / "b", ExportOptions(formats=("onnx",), precisions="int8",
                                                                 precision_tolerance=tol, force=True))
    g = read_manifest(out).graph_set("onnx", "int8")
    assert g.forced and g.tolerance == tol
    # the runtime refuses a variant above its recorded bound unless max_action_error covers it
    with pytest.raises(BundleError, match=rf"max action error {recorded:.4f} .*\(it was forced at "
                                          rf"export\); set max_action_error >= {recorded:.4f}"):
        load_bundle(out, precision="int8", warm_up=False)
    assert load_bundle(out, precision="int8", max_action_error=recorded * 1.01, warm_up=False).precision == "int8"
    assert load_bundle(out, warm_up=False).precision == "fp32"  # auto never picks it


def test_auto_picks_fastest_allowed_variant_for_the_device():
    def gs(precision, err, lat, tol=0.01, inpaint=""):
        return GraphSet("onnx", "encoder.onnx", f"step.{precision}.onnx", precision, err, 0.0, inpaint_step=inpaint,
                        tolerance=tol, latency_ms=lat, latency_device="CPUExecutionProvider x86_64")

    spec = SimpleNamespace(formats=["onnx"], graphs=[gs("fp32", 1e-6, 100.0, 1e-4, inpaint="inp.onnx"),
                                                     gs("int8", 0.005, 40.0), gs("fp16", 0.001, 90.0)])
    assert choose_graphs(spec, "onnx", "auto", "cpu").precision == "int8"  # measured fastest, within tolerance
    assert choose_graphs(spec, "onnx", "auto", "cpu", max_action_error=0.002).precision == "fp16"
    assert choose_graphs(spec, "onnx", "auto", "cpu", max_action_error=0.0005).precision == "fp32"
    assert choose_graphs(spec, "onnx", "auto", "cpu", need_inpaint=True).precision == "fp32"
    # no latency measured on CUDA: the fewest bytes among the variants with CUDA kernels (int8 has none)
    assert choose_graphs(spec, "onnx", "auto", "cuda").precision == "fp16"
    spec.graphs[1] = gs("int8", 0.005, 400.0)  # slower than fp32 where it was measured: not chosen
    assert choose_graphs(spec, "onnx", "auto", "cpu").precision == "fp16"
    spec.graphs[1] = gs("int8", 0.02, 40.0, tol=0.01)  # forced above its tolerance: never chosen by auto
    assert choose_graphs(spec, "onnx", "auto", "cpu").precision == "fp16"
    with pytest.raises(BundleError, match="no onnx graphs in precision 'bf16'"):
        choose_graphs(spec, "onnx", "bf16", "cpu")
    with pytest.raises(BundleError, match=r"onnx-fp16 has no inpainting step graph .*variants with one: \['fp32'\]"):
        choose_graphs(spec, "onnx", "fp16", "cpu", need_inpaint=True)


def test_precision_without_native_kernels_refused_at_load(variant_bundle):
    with pytest.raises(BundleError, match=r"'fp16' does not run natively on cpu with torchscript graphs \(it needs "
                                          r"cuda\); torchscript on this device runs \['fp32'"):
        load_bundle(variant_bundle, backend="torchscript", precision="fp16", device="cpu", warm_up=False)
    if "bf16" not in supported_on("cpu", "torchscript"):
        assert not {"avx512_bf16", "amx_bf16"} & cpu_flags()
        with pytest.raises(BundleError, match="'bf16' does not run natively on cpu"):
            load_bundle(variant_bundle, backend="torchscript", precision="bf16", device="cpu", warm_up=False)
    with pytest.raises(BundleError, match="'int8' does not run natively on cuda with onnx graphs"):
        load_bundle(variant_bundle, precision="int8", device="cuda", max_action_error=0.05, warm_up=False)
    # ONNX Runtime's CPU provider has fp16 kernels: the fp16 ONNX graph runs there
    assert load_bundle(variant_bundle, precision="fp16", device="cpu", warm_up=False).precision == "fp16"


def test_int8_variant_runs_with_its_recorded_error(variant_bundle):
    engine = load_bundle(variant_bundle, precision="int8", max_action_error=0.05)
    assert engine.precision == "int8"
    assert ("forced above tolerance" in engine.recorded_error) == (engine.graphs.max_abs_error > 0.01)
    fp32 = load_bundle(variant_bundle, precision="fp32")
    obs = {"camera": np.zeros((2, 24, 24, 3), np.uint8), "state": np.zeros((2, 2), np.float32)}
    a, b = engine.predict(obs, seed=3).actions, fp32.predict(obs, seed=3).actions
    assert 0 < np.abs(a - b).max() < 0.2  # close to fp32, not identical (raw units)


def test_altered_recorded_error_or_variant_file_refused(tmp_path, variant_bundle):
    b = tmp_path / "b"
    shutil.copytree(variant_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    int8 = next(g for g in m["graphs"] if g["precision"] == "int8")
    int8["max_abs_error"] = 0.001
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="do not match graphs_sha256"):
        load_bundle(b, warm_up=False)
    shutil.rmtree(b)
    shutil.copytree(variant_bundle, b)
    with open(b / "denoise_step.int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="denoise_step.int8.onnx sha256 mismatch"):
        load_bundle(b, precision="int8", max_action_error=0.05, warm_up=False)


def test_calibration_data_of_wrong_shape_refused(tmp_path, tiny_ckpt, tiny_data):
    bad = tmp_path / "bad.npz"
    np.savez(bad, camera=tiny_data["camera"][:8, :, :12], state=tiny_data["state"][:8])
    with pytest.raises(ConfigError, match=r"calibration data .*bad.npz does not match the policy: image 'camera'"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(precisions="int8", calibration=bad))
    missing = tmp_path / "missing.npz"
    np.savez(missing, camera=tiny_data["camera"][:8])
    with pytest.raises(ConfigError, match=r"no array for observation key\(s\) \['state'\]"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(precisions="int8", calibration=missing))


def test_io_binding_loop_matches_plain_session_runs(tiny_bundle):
    """The I/O-bound loop (device buffers, ping-pong outputs) equals running the sessions step by step."""
    engine = load_bundle(tiny_bundle, backend="onnxruntime", device="cpu")
    be = engine.backend
    obs = {"camera": np.full((1, 2, 24, 24, 3), 90, np.uint8), "state": np.ones((1, 2, 2), np.float32)}
    noise = engine.make_noise(1, 5)
    kept = noise.copy()
    actions = engine.predict(obs, noise=noise).actions
    assert np.array_equal(noise, kept)  # the loop writes into its own buffers, not the caller's noise
    cond = be.enc.run(None, dict(zip(be.enc_inputs, [obs[k] for k in engine.keys])))[0]
    x = noise
    for t, prev in engine.schedule:
        x, ref = be.stp.run(None, {"sample": x, "timestep": t, "prev_timestep": prev, "cond": cond})
    assert np.array_equal(actions, ref)


def test_provider_chain_and_device_resolution(monkeypatch, tiny_bundle):
    import onnxruntime as ort

    from dp_runtime.engine import backends
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backends.ort_provider_chain("cpu") == ["CPUExecutionProvider"]
    assert backends.ort_provider_chain("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                       "CPUExecutionProvider"]
    monkeypatch.setattr(backends, "cuda_driver_present", lambda: False)
    assert backends.ort_provider_chain("auto") == ["CPUExecutionProvider"]  # no driver: don't try CUDA
    assert backends.resolve_device("onnxruntime", "auto") == "cpu"
    monkeypatch.setattr(backends, "cuda_driver_present", lambda: True)
    assert backends.ort_provider_chain("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert backends.resolve_device("onnxruntime", "auto") == "cuda"
    assert backends.resolve_device("torchscript", "tensorrt") == "cuda"
    with pytest.raises(BundleError, match="device must be auto, cpu, cuda or tensorrt, got 'gpu'"):
        backends.resolve_device("onnxruntime", "gpu")
    monkeypatch.undo()
    if not backends.cuda_driver_present():  # a CPU machine: asking for CUDA is an error, not a silent CPU run
        with pytest.raises(BundleError, match="could not start CUDAExecutionProvider"):
            load_bundle(tiny_bundle, device="cuda", precision="fp32", warm_up=False)


def test_cli_refuses_then_forces_and_inspect_lists_variants(tmp_path, tiny_ckpt, capsys):
    from dp_runtime.cli import export_main, inspect_main
    out = str(tmp_path / "b")
    args = [str(tiny_ckpt), "-o", out, "--formats", "onnx", "--precision", "int8", "--tolerance", "0.001"]
    assert export_main(args) == 2
    assert "ParityError: onnx-int8: max action error" in capsys.readouterr().err
    assert export_main(args + ["--force-precision"]) == 0
    assert inspect_main([out, "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "onnx-int8" in text and "FORCED above tolerance" in text and "precision fp32" in text


def test_precision_requests_checked_before_any_work(tmp_path, tiny_ckpt):
    with pytest.raises(ConfigError,
                       match=r"precision bf16 is exported as torchscript or export only; add it to --formats"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(formats=("onnx",), precisions="bf16"))
    with pytest.raises(ConfigError, match=r"precision \['int4'\] is not one of \['fp32', 'int8', 'fp16', 'bf16', 'tf32'\]"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(precisions="int8,int4"))
    assert not (tmp_path / "o").exists()


def test_replay_runs_the_variant_asked_for(tmp_path, variant_bundle, capsys):
    import yaml

    from dp_runtime.replay.cli import main as replay_cli
    from helpers.bags import write_test_bag
    bag = write_test_bag(tmp_path / "bag", "mcap", seconds=3.0)
    cfg = tmp_path / "policy.yaml"
    cfg.write_text(yaml.safe_dump({"policy_node": {"ros__parameters": {
        "control_rate_hz": 10.0, "command_topic": "/commands", "max_action_error": 0.05,
        "obs": {"state": {"joint_names": ["joint1", "joint2"]}}}}}))
    metrics = {}
    for precision in ("int8", "fp32"):
        out = tmp_path / precision
        assert replay_cli([str(bag), "--bundle", str(variant_bundle), "--config", str(cfg), "--out", str(out),
                           "--seed", "1", "--no-progress", "--precision", precision]) == 0
        metrics[precision] = json.loads((out / "metrics.json").read_text())
        assert metrics[precision]["precision"] == precision
        assert f"on CPUExecutionProvider ({precision})" in capsys.readouterr().out
    assert metrics["int8"]["action_mse_mean"] != metrics["fp32"]["action_mse_mean"]
