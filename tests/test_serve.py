"""dp-serve on a real Ray Serve instance on localhost, and the node's remote engine against it."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from dp_runtime.control import PolicyRunner, RunnerConfig  # noqa: E402
from dp_runtime.engine import load_bundle  # noqa: E402
from dp_runtime.engine.remote import ClientTls, RemoteEngine  # noqa: E402
from dp_runtime.errors import BundleError, ConfigError, ServerError, ShapeError  # noqa: E402
from dp_runtime.serve.process import ServerProcess, free_port  # noqa: E402
from test_compiled import obs_of  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    srv = ServerProcess([tiny_bundle], tmp_path_factory.mktemp("serve") / "dp_serve.log",
                        args=("--num-cpus", "2", "--threads", "1"))  # dp-serve's default batch wait: 0
    with srv.start():
        yield srv


def test_remote_chunks_equal_local_ones_with_the_same_noise(server, tiny_bundle):
    assert "TLS IS OFF" in server.tail()  # said loudly when started without TLS
    local = load_bundle(tiny_bundle, backend="onnxruntime")
    remote = RemoteEngine(tiny_bundle, server.url, timeout_s=10.0)
    assert remote.can_inpaint and remote.warmup_latency_s > 0 and remote.provider.startswith("remote:")
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        obs = obs_of(rng)
        np.testing.assert_allclose(remote.predict(obs, seed=seed).actions, local.predict(obs, seed=seed).actions,
                                   atol=1e-6)
        known = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
        for mask in (np.arange(8) < 3, np.where(np.arange(8) < 3, 1.0, 0.6 ** np.arange(8)).astype(np.float32)):
            np.testing.assert_allclose(remote.predict(obs, seed=seed, known=known, mask=mask).actions,
                                       local.predict(obs, seed=seed, known=known, mask=mask).actions, atol=1e-6)


def test_concurrent_robots_are_batched_and_each_gets_its_own_chunk(server, tiny_bundle):
    local = load_bundle(tiny_bundle, backend="onnxruntime")
    robots = [RemoteEngine(tiny_bundle, server.url, timeout_s=30.0, warm_up=False) for _ in range(4)]
    rng = np.random.default_rng(1)
    observations = [obs_of(rng) for _ in range(32)]
    before = {int(k): v for k, v in server.health()["batch_sizes"].items()}
    lock = threading.Lock()
    batches = []

    def one(i):
        engine = robots[i % 4]
        pred = engine.predict(observations[i], seed=100 + i)
        with lock:
            batches.append(engine.last_batch)
        return pred.actions

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(32)))
    for i, actions in enumerate(got):
        np.testing.assert_allclose(actions, local.predict(observations[i], seed=100 + i).actions, atol=1e-6)
    after = {int(k): v for k, v in server.health()["batch_sizes"].items()}
    formed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert max(batches) > 1 and any(k > 1 and n > 0 for k, n in formed.items()), formed


def test_batches_gather_while_requests_queue(server, tiny_bundle):
    """Serve forms a batch when its first request arrives; with the default wait of 0 requests queued
    behind a computing batch would each run alone. dp-serve paces the wait to the compute while two or
    more queue: 8 robots that each ask again as soon as their chunk comes keep a queue, and their
    chunks are computed in batches (mean well above 1; about 1.3 without the pacing)."""
    robots = [RemoteEngine(tiny_bundle, server.url, timeout_s=30.0, warm_up=False) for _ in range(8)]
    rng = np.random.default_rng(4)
    observations = [obs_of(rng) for _ in range(8)]
    before = {int(k): v for k, v in server.health()["batch_sizes"].items()}

    def robot(i):
        for k in range(25):
            robots[i].predict(observations[i], seed=k)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(robot, range(8)))
    after = {int(k): v for k, v in server.health()["batch_sizes"].items()}
    formed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = sum(formed.values())
    assert sum(k * n for k, n in formed.items()) == 200 and 200 / calls >= 2.0, formed


def test_refusals_name_the_input_and_the_fix(server, tiny_bundle, tiny_ckpt, tmp_path):
    from dp_runtime.export import ExportOptions, export_bundle
    other = export_bundle(tiny_ckpt, tmp_path / "other", ExportOptions(formats=("onnx",), parity_samples=1))
    with pytest.raises(BundleError, match=r"does not host this policy: bundle .*other has graphs_sha256 .*start "
                                          r"dp-serve with this bundle"):
        RemoteEngine(other, server.url)
    remote = RemoteEngine(tiny_bundle, server.url, timeout_s=10.0, warm_up=False)
    bad = obs_of(np.random.default_rng(2))
    bad["camera"] = bad["camera"][:, :20]
    with pytest.raises(ShapeError, match="camera"):
        remote.predict(bad, seed=0)  # refused on the robot, before it costs a round trip
    import urllib.request
    req = urllib.request.Request(f"{server.url}/dp/chunk", data=b"not an npz", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and b"not a dp_runtime request" in e.value.read()
    with pytest.raises(ConfigError, match="server_url 'localhost:8000': expected http://HOST:PORT"):
        RemoteEngine(tiny_bundle, "localhost:8000")
    t0 = time.perf_counter()
    with pytest.raises(ServerError, match=rf"127.0.0.1:{free_port()}|does not answer"):
        RemoteEngine(tiny_bundle, f"http://127.0.0.1:{free_port()}")
    assert time.perf_counter() - t0 < 10  # a URL that does not answer is an error, never a hang


def test_dp_serve_refuses_a_bundle_load_bundle_would_refuse(tiny_bundle, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    victim = next(broken.glob("*.onnx"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    for bundle, expected in ((tmp_path / "missing", "does not exist"), (broken, "sha256 mismatch")):
        r = subprocess.run([sys.executable, "-m", "dp_runtime.serve.cli", str(bundle), "--port", str(free_port())],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "dp_runtime.serve.cli", str(tiny_bundle), "--tls-cert", str(broken)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr


def feed(runner: PolicyRunner, t: float, rng) -> None:
    o = obs_of(rng)
    runner.add("camera", t, o["camera"][-1])
    runner.add("state", t, o["state"][-1])


def test_a_killed_replica_stops_the_robot_within_a_chunk_and_it_resumes_by_itself(server, tiny_bundle):
    """A replica dies mid-run: chunk requests fail (counted, the cause logged once), the queue runs dry
    and on_starvation stop ends the commands within one chunk duration; Ray Serve starts a new replica
    and the next chunks come again without restarting anything. No exception escapes the runner."""
    warnings = _run_through_fault(server, tiny_bundle, lambda: subprocess.run(
        ["pkill", "-9", "-f", "ServeReplica:dp_runtime"], check=False))
    assert any("ServeReplica" in m or "refused" in m or "closed the connection" in m or "no reply" in m
               or "does not answer" in m for m in warnings), warnings


def test_a_restarted_server_stops_the_robot_within_a_chunk_and_it_resumes_by_itself(tiny_bundle, tmp_path):
    """The whole server stops (SIGINT: Ray and Serve shut down) and a new one starts on the same port
    a moment later: the robot stops within a chunk duration, the WARN names the unreachable server, and
    the chunks come again from the new server with no restart of the robot side."""
    args = ("--num-cpus", "2", "--threads", "1")
    first = ServerProcess([tiny_bundle], tmp_path / "first.log", args=args).start()
    second = ServerProcess([tiny_bundle], tmp_path / "second.log", port=first.port, args=args)

    def restart():  # off the control loop, which keeps ticking through the outage
        threading.Thread(target=lambda: (first.stop(), second.start()), daemon=True).start()

    try:
        warnings = _run_through_fault(first, tiny_bundle, restart)
    finally:
        first.stop()
        second.stop()
    assert any("does not answer" in m or "refused" in m or "closed the connection" in m for m in warnings), warnings


def _run_through_fault(server: ServerProcess, bundle, fault) -> list[str]:
    """Drive a runner as the node does (control ticks here, requests on an inference thread), call
    ``fault`` 3 s in, and check the outage: no command within one chunk duration of the first failed
    request, then commands again. Returns the warnings."""
    remote = RemoteEngine(bundle, server.url, timeout_s=1.0)
    warnings = []
    runner = PolicyRunner(remote, RunnerConfig(control_rate_hz=10, inference_lead=2, on_starvation="stop",
                                               max_obs_age=1.0), warn=lambda cause, msg: warnings.append(msg))
    rng = np.random.default_rng(3)
    t0 = time.monotonic()
    log = []  # (t, published, inference_errors, chunks)
    faulted_at = None
    done = threading.Event()

    def inference():  # the node's inference thread: a request that hangs never delays a command
        while not done.is_set():
            if runner.needs_inference():
                runner.infer(time.monotonic())
            else:
                time.sleep(0.005)

    worker = threading.Thread(target=inference, daemon=True)
    worker.start()
    while time.monotonic() - t0 < 180 and not (faulted_at and _resumed(log, faulted_at)):
        now = time.monotonic()
        feed(runner, now, rng)
        cmd = runner.tick(now)  # raises if anything escaped the runner
        log.append((now - t0, cmd is not None, runner.stats.inference_errors, runner.stats.chunks))
        if faulted_at is None and now - t0 > 3:
            faulted_at = now - t0
            fault()
        time.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
    done.set()
    worker.join(5)
    assert faulted_at is not None and runner.stats.inference_errors > 0, "the fault was not seen"
    # the outage that stopped the robot: from the first failed request after the last chunk that came
    silent_at = next(t for t, published, _, _ in log if t > faulted_at and not published)
    last_chunk = max(c for t, _, _, c in log if t < silent_at)
    errors_then = min(e for t, _, e, c in log if c == last_chunk)
    outage_from = next(t for t, _, e, c in log if c == last_chunk and e > errors_then)
    chunk_s = remote.spec.n_action_steps / 10
    assert silent_at - outage_from <= chunk_s + 0.15  # stopped within one chunk duration
    assert _resumed(log, faulted_at), "no chunk after the server came back"
    return warnings


def _resumed(log, faulted_at) -> bool:
    """Commands published again after a silent stretch that followed the fault."""
    after = [(t, p) for t, p, _, _ in log if t > faulted_at]
    quiet = next((i for i, (_, p) in enumerate(after) if not p), None)
    return quiet is not None and any(p for _, p in after[quiet:])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from helpers.tls import make_pki
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls(tiny_bundle, pki, tmp_path):
    import ssl
    client = ssl.create_default_context(cafile=str(pki["ca"]))
    srv = ServerProcess([tiny_bundle], tmp_path / "dp_serve_tls.log", tls_context=client,
                        args=("--num-cpus", "2", "--threads", "1", "--tls-cert", str(pki["server_cert"]),
                              "--tls-key", str(pki["server_key"])))
    with srv.start():
        assert srv.url.startswith("https://") and "TLS IS OFF" not in srv.tail()
        remote = RemoteEngine(tiny_bundle, srv.url, timeout_s=10.0, tls=ClientTls(str(pki["ca"])))
        obs = obs_of(np.random.default_rng(4))
        local = load_bundle(tiny_bundle, backend="onnxruntime")
        np.testing.assert_allclose(remote.predict(obs, seed=9).actions, local.predict(obs, seed=9).actions, atol=1e-6)
        # a robot presenting its own certificate works too (for a TLS proxy that requires one)
        RemoteEngine(tiny_bundle, srv.url, tls=ClientTls(str(pki["ca"]), str(pki["client_cert"]),
                                                         str(pki["client_key"])), warm_up=False)
        with pytest.raises(ServerError, match="TLS handshake failed.*server_tls_ca"):
            RemoteEngine(tiny_bundle, srv.url, tls=ClientTls(str(pki["other_ca"])))  # not the server's CA
        with pytest.raises(ServerError):
            RemoteEngine(tiny_bundle, srv.url.replace("https", "http"))  # plain HTTP to a TLS port
    with pytest.raises(ConfigError, match="server_tls_cert and server_tls_key go together"):
        RemoteEngine(tiny_bundle, srv.url, tls=ClientTls(str(pki["ca"]), str(pki["client_cert"])))
    with pytest.raises(ConfigError, match="server_tls_ca /nope: no such file"):
        RemoteEngine(tiny_bundle, srv.url, tls=ClientTls("/nope"))
    with pytest.raises(ConfigError, match="TLS files are set but the URL is http"):
        RemoteEngine(tiny_bundle, srv.url.replace("https", "http"), tls=ClientTls(str(pki["ca"])))
    r = subprocess.run([sys.executable, "-m", "dp_runtime.serve.cli", str(tiny_bundle), "--tls-cert",
                        str(pki["server_cert"]), "--tls-key", str(pki["ca"])], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "TLS files do not load" in r.stderr  # a key that is not the certificate's


def test_node_parameters_for_the_remote_backend():
    from dp_runtime.ros.params import NodeParams
    with pytest.raises(ConfigError, match="backend remote needs server_url"):
        NodeParams(bundle="b", backend="remote")
    with pytest.raises(ConfigError, match="server_url is set but backend is 'auto'; set backend: remote"):
        NodeParams(bundle="b", server_url="http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="server_timeout must be > 0"):
        NodeParams(bundle="b", backend="remote", server_url="http://h:1", server_timeout=0.0)
