"""The compiled graph format (torch.export + AOTInductor) and batched chunks, on the CPU.

The CUDA side (re-export on the device, TF32, CUDA-graph batch buckets) shares this code; it is
measured by ``python bench/latency.py --device cuda`` where a GPU is lent.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from dp_runtime.control import PolicyRunner, RunnerConfig
from dp_runtime.engine import load_bundle
from dp_runtime.engine.backends import BackendOptions, batch_bucket, pad_batch
from dp_runtime.engine.compiled import KEY_FILE, PACKAGE, CompileCache, CompileKey
from dp_runtime.engine.formats import export_program
from dp_runtime.engine.manifest import scan_exported
from dp_runtime.errors import BatchNormError, BundleError, ConfigError, ShapeError
from dp_runtime.holds import early_steps, every_step
from dp_runtime.precision import check_runs_on


def obs_of(rng, n=None):
    shape = () if n is None else (n,)
    return {"camera": rng.integers(0, 256, (*shape, 2, 24, 24, 3), dtype=np.uint8),
            "state": rng.uniform(-1, 1, (*shape, 2, 2)).astype(np.float32)}


def test_compiled_programs_match_onnx_and_record_their_parity(compiled_bundle):
    """Encoder, step and inpainting step compiled each and looped over (issue 34): any step count, and the mask
    may change between steps (soft_inpaint_early, the default transition, runs on the compiled backend)."""
    m = json.loads((compiled_bundle / "manifest.json").read_text())
    (g,) = [g for g in m["graphs"] if g["format"] == "export"]
    assert (g["encoder"], g["step"], g["inpaint_step"]) == ("encoder.pt2", "denoise_step.pt2",
                                                            "denoise_step_inpaint.pt2")
    assert g["max_abs_error"] <= 1e-4 and g["inpaint_max_abs_error"] <= 1e-4
    assert set(m["files"]) >= {"encoder.pt2", "denoise_step.pt2", "denoise_step_inpaint.pt2"}
    compiled = load_bundle(compiled_bundle, backend="aoti", device="cpu")
    onnx = load_bundle(compiled_bundle, backend="onnxruntime", device="cpu")
    assert compiled.provider == "aoti:cpu" and compiled.masks_per_step
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs = obs_of(rng)
        np.testing.assert_allclose(compiled.predict(obs, seed=4).actions, onnx.predict(obs, seed=4).actions, atol=1e-5)
        known, mask = rng.uniform(-1, 1, (8, 2)).astype(np.float32), np.arange(8) < 3
        a = compiled.predict(obs, seed=5, known=known, mask=mask).actions
        np.testing.assert_allclose(a, onnx.predict(obs, seed=5, known=known, mask=mask).actions, atol=1e-5)
        soft = np.where(mask, 1.0, 0.6 ** np.arange(8)).astype(np.float32)  # soft_inpaint's weights
        for hold in (every_step, early_steps):
            a = compiled.predict(obs, seed=5, known=known, mask=soft, hold=hold).actions
            np.testing.assert_allclose(a, onnx.predict(obs, seed=5, known=known, mask=soft, hold=hold).actions,
                                       atol=1e-5)
    PolicyRunner(compiled, RunnerConfig(chunk_transition="soft_inpaint_early"))  # accepted now
    # the steps run in pairs: an odd count's last pair takes one step, a per-step mask each its own
    for steps in (3, 4):
        aoti, ort = [load_bundle(compiled_bundle, backend=b, device="cpu", num_inference_steps=steps)
                     for b in ("aoti", "onnxruntime")]
        np.testing.assert_allclose(aoti.predict(obs, seed=6).actions, ort.predict(obs, seed=6).actions, atol=1e-5)
        a = aoti.predict(obs, seed=7, known=known, mask=soft, hold=early_steps).actions
        np.testing.assert_allclose(a, ort.predict(obs, seed=7, known=known, mask=soft, hold=early_steps).actions,
                                   atol=1e-5)


def test_the_looped_programs_equal_the_unrolled_chunk_program(compiled_bundle, tiny_ckpt, tmp_path):
    """The loop over the compiled step gives the whole-chunk program's actions (the format before issue 34),
    plain and inpainting, within 1e-6: same graphs, same arithmetic, only the host drives the steps."""
    from dp_runtime.checkpoint import load_any
    from dp_runtime.engine.compiled import compile_program
    from dp_runtime.export.bundle import graphs_to_export, scheduler_spec
    from dp_runtime.export.graphs import ChunkGraph
    from dp_runtime.export.precision import convs_as_matmul
    ck = load_any(tiny_ckpt)
    policy = ck.policy.eval()
    ddim = scheduler_spec(ck.config.scheduler, 2)
    traced = {g.role: g for g in graphs_to_export(policy, 2, True, convs_as_matmul(policy.model))}
    looped = load_bundle(compiled_bundle, backend="aoti", device="cpu")
    rng = np.random.default_rng(3)
    obs = obs_of(rng, 1)
    noise = rng.standard_normal((1, 8, 2)).astype(np.float32)
    known, mask = rng.uniform(-1, 1, (1, 8, 2)).astype(np.float32), (np.arange(8) < 3)[None, :, None]
    for role, held in (("step", ()), ("inpaint_step", (known, mask.astype(np.float32)))):
        chunk = ChunkGraph(traced["encoder"].module, traced[role].module, ddim.timesteps, ddim.prev_timesteps).eval()
        args = tuple(torch.from_numpy(a) for a in (obs["camera"], obs["state"], noise, *held))
        two = tuple(a.repeat(2, *([1] * (a.ndim - 1))) for a in args)  # a batch of 1 would specialize the axis
        export_program(chunk, two, [], [], tmp_path / f"{role}.pt2", 17)
        compile_program(tmp_path / f"{role}.pt2", torch.device("cpu"), tmp_path / f"{role}.package.pt2")
        unrolled = torch._inductor.aoti_load_package(str(tmp_path / f"{role}.package.pt2"))
        want = unrolled(*args).numpy()[0]
        got = looped.predict({k: v[0] for k, v in obs.items()}, noise=noise[0],
                             **({"known": known[0], "mask": mask[0, :, 0]} if held else {})).actions
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_batched_prediction_equals_single_predictions_with_the_same_noise(compiled_bundle):
    rng = np.random.default_rng(1)
    robots = [obs_of(rng) for _ in range(5)]
    seeds = [10, 11, 12, 13, 14]
    for backend in ("onnxruntime", "aoti"):
        engine = load_bundle(compiled_bundle, backend=backend, device="cpu")
        batch = engine.predict_batch(robots, seeds)
        for obs, seed, pred in zip(robots, seeds, batch):
            np.testing.assert_allclose(pred.actions, engine.predict(obs, seed=seed).actions, atol=2e-6)
        # One robot inpaints, the others commit nothing: each still gets exactly its own chunk.
        known, mask = rng.uniform(-1, 1, (8, 2)).astype(np.float32), np.arange(8) < 2
        mixed = engine.predict_batch(robots, seeds, known=[None, known, None, None, None],
                                     mask=[None, mask, None, None, None])
        np.testing.assert_allclose(mixed[0].actions, batch[0].actions, atol=2e-6)
        np.testing.assert_allclose(mixed[1].actions, engine.predict(robots[1], seed=11, known=known,
                                                                    mask=mask).actions, atol=2e-6)


def test_a_batch_whose_observations_differ_in_shape_is_refused_naming_the_robot(tiny_bundle):
    engine = load_bundle(tiny_bundle, warm_up=False)
    rng = np.random.default_rng(2)
    robots = [obs_of(rng), obs_of(rng)]
    robots[1]["camera"] = robots[1]["camera"][:, :20]
    with pytest.raises(ShapeError, match="robot 1 of the batch: image 'camera'"):
        engine.predict_batch(robots, [0, 1])
    with pytest.raises(ShapeError, match="one seed per observation"):
        engine.predict_batch(robots[:1], [0, 1])


def test_batch_buckets_pad_by_repeating_the_last_row():
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 8, 9, 64, 65, 256)] == [1, 2, 4, 8, 8, 16, 64, 128, 256]
    a = np.arange(6).reshape(3, 2)
    padded = pad_batch(a, 4)
    assert padded.shape == (4, 2) and (padded[3] == a[2]).all() and pad_batch(a, 3) is a


def test_an_edited_program_is_refused_before_it_is_compiled(compiled_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(compiled_bundle, copy)
    with open(copy / "denoise_step.pt2", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="denoise_step.pt2 sha256 mismatch"):
        load_bundle(copy, backend="aoti", device="cpu")


def test_exported_programs_with_batchnorm_are_refused(tmp_path):
    bn = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4)).eval()
    export_program(bn, (torch.zeros(2, 2, 8),), ["x"], ["y"], tmp_path / "bn.pt2", 17)
    with pytest.raises(BatchNormError, match="exported program bn.pt2"):
        scan_exported(tmp_path / "bn.pt2")


def test_compiled_format_refusals(compiled_bundle):
    with pytest.raises(BundleError, match="device 'tensorrt' is not available with backend aoti"):
        load_bundle(compiled_bundle, backend="aoti", device="tensorrt")
    with pytest.raises(BundleError, match="precision 'tf32' does not run natively on cpu"):
        check_runs_on("tf32", "cpu", "export")


def test_tf32_is_refused_at_export_on_a_machine_without_cuda(tiny_ckpt, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine measures tf32")
    from dp_runtime.export import ExportOptions, export_bundle
    with pytest.raises(ConfigError, match="tf32 is measured where it runs"):
        export_bundle(tiny_ckpt, tmp_path / "o", ExportOptions(precisions="tf32"))


# -- the compile cache, with a stand-in compiler (the real one is exercised above) ----------------------
def fake_compile(calls):
    def compile_to(path):
        calls.append(path)
        path.write_bytes(b"compiled code")
    return compile_to


KEY = CompileKey("ab" * 32, "2.13.0", "None", "cpu x86_64 avx2")


def test_cache_compiles_once_per_key_and_reuses_it(tmp_path, caplog):
    cache, calls = CompileCache(tmp_path / "cache"), []
    first = cache.package(KEY, fake_compile(calls), "denoise_step.pt2")
    with caplog.at_level(logging.INFO):
        again = cache.package(KEY, fake_compile(calls), "denoise_step.pt2")
    assert len(calls) == 1 and first == again and again.name == PACKAGE
    assert "from the cache" in caplog.text
    other_gpu = CompileKey(KEY.program_sha256, KEY.torch, "13.0", "cuda NVIDIA H200 sm90")
    assert cache.package(other_gpu, fake_compile(calls), "denoise_step.pt2") != first and len(calls) == 2


@pytest.mark.parametrize("damage, words", [
    ("key", "was compiled for another torch, device: recompiling"),
    ("package", "was altered after compiling (sha256 mismatch): recompiling"),
    ("json", "has an unreadable key.json"),
])
def test_a_cache_entry_for_another_machine_or_altered_is_recompiled_never_loaded(tmp_path, caplog, damage, words):
    cache, calls = CompileCache(tmp_path / "cache"), []
    entry = cache.package(KEY, fake_compile(calls), "denoise_step.pt2").parent
    if damage == "key":  # a package copied in from another machine, its key file with it
        recorded = json.loads((entry / KEY_FILE).read_text())
        recorded["key"].update(device="cuda NVIDIA H100 sm90", torch="2.11.0")
        (entry / KEY_FILE).write_text(json.dumps(recorded))
    elif damage == "package":
        (entry / PACKAGE).write_bytes(b"tampered")
    else:
        (entry / KEY_FILE).write_text("{")
    with caplog.at_level(logging.INFO):
        again = cache.package(KEY, fake_compile(calls), "denoise_step.pt2")
    assert len(calls) == 2 and words in caplog.text
    assert again.read_bytes() == b"compiled code"


def test_an_unwritable_cache_compiles_into_a_temporary_directory_and_says_so(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache, calls = CompileCache(blocker / "cache"), []
    with caplog.at_level(logging.INFO):
        package = cache.package(KEY, fake_compile(calls), "denoise_step.pt2")
    assert package.read_bytes() == b"compiled code" and not str(package).startswith(str(blocker))
    assert "is not writable" in caplog.text and "every start compiles again" in caplog.text


def test_compiled_threads_leave_a_core_and_never_exceed_the_cores(caplog, monkeypatch):
    """Inductor writes the count into the code and every region waits for all threads: one fewer than the cores
    by default (bench/compiled_loop.py: 11.6 ms with a core taken against 25.4 ms on all cores); a count above the
    cores is cut, with a warning; the count is part of the cache key."""
    from dp_runtime.engine.compiled import cpu_threads
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert cpu_threads(None) == 7 and cpu_threads(0) == 7 and cpu_threads(3) == 3
    with caplog.at_level(logging.WARNING):
        assert cpu_threads(32) == 8
    assert "threads 32 is more than this machine's 8 cores" in caplog.text
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert cpu_threads(None) == 1
    assert CompileKey("a", "t", "c", "d", 1).digest() != CompileKey("a", "t", "c", "d", 2).digest()


def test_a_step_program_cached_one_step_per_call_is_recompiled_as_a_pair(tmp_path, caplog):
    """A cache entry from before the steps ran in pairs (its key without the steps) is never loaded as a pair."""
    cache, calls = CompileCache(tmp_path / "cache"), []
    single = CompileKey(KEY.program_sha256, KEY.torch, KEY.cuda, KEY.device, 1, steps=1)
    entry = cache.package(single, fake_compile(calls), "denoise_step.pt2").parent
    recorded = json.loads((entry / KEY_FILE).read_text())
    del recorded["key"]["steps"]  # as written before the pair
    (entry / KEY_FILE).write_text(json.dumps(recorded))
    with caplog.at_level(logging.INFO):
        cache.package(single, fake_compile(calls), "denoise_step.pt2")
    assert len(calls) == 2 and "was compiled for another steps: recompiling" in caplog.text
    pair = CompileKey(KEY.program_sha256, KEY.torch, KEY.cuda, KEY.device, 1, steps=2)
    assert not cache.has(pair) and pair.digest() != single.digest()


def test_backend_auto_times_the_compiled_programs_only_where_a_compile_is_cached(compiled_bundle, tmp_path, caplog):
    """Issue 34 item 6: a first start never compiles for minutes behind `auto`; with a cached compile the faster
    here wins, measured and logged."""
    with caplog.at_level(logging.INFO):
        cold = load_bundle(compiled_bundle, device="cpu", options=BackendOptions(compile_cache=tmp_path / "empty"))
    assert cold.backend.name == "onnxruntime" and "no compile of the export graphs cached" in caplog.text
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        warm = load_bundle(compiled_bundle, device="cpu")  # the export's parity check filled the default cache
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto: ")]
    assert chosen and "onnxruntime" in chosen[0] and "aoti" in chosen[0] and " ms" in chosen[0]
    assert chosen[0].split()[2] == warm.backend.name
    assert " ms" in warm.chosen_because and not cold.chosen_because  # the node's start-up line shows it
