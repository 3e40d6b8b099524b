"""The node's engine when inference runs on a dp-serve host: same interface as PolicyEngine.

The node keeps everything but the denoising: observation history, queue, transitions, timing. The
bundle directory on the robot still describes the policy (its manifest: spec, norm inventory,
graphs_sha256; the graph files need not be there), and the server must host exactly those graphs
or the engine refuses to open. Each chunk is one HTTP(S) request with a deadline; a failure is a
ServerError naming the server and the cause, which the runner counts and logs once per cause while
the stale/starvation rules (hold or stop) keep the robot safe, and the next chunk simply tries
again, so the node recovers by itself when the server is back. Standard library HTTP, no Ray.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import numpy as np

from ..errors import BundleError, ConfigError, ServerError
from ..holds import Hold, every_step
from ..obs_spec import validate_obs
from ..wire import ROUTE, ChunkRequest, decode_reply, encode_request
from .engine import Prediction
from .manifest import read_manifest, verify_norm_inventory


@dataclass(frozen=True)
class ClientTls:
    """TLS for the robot side: the CA that signed the server's certificate, and this robot's own
    certificate and key when the server requires client certificates."""
    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    def context(self) -> ssl.SSLContext:
        for name, path in (("server_tls_ca", self.ca), ("server_tls_cert", self.cert), ("server_tls_key", self.key)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} {path}: no such file")
        if bool(self.cert) != bool(self.key):
            raise ConfigError("server_tls_cert and server_tls_key go together (this robot's certificate and key)")
        try:
            ctx = ssl.create_default_context(cafile=self.ca or None)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"TLS files do not load ({e}): server_tls_ca must be a PEM CA bundle, "
                              "server_tls_cert/server_tls_key this robot's PEM certificate and key") from None
        return ctx


@dataclass(frozen=True)
class RemoteBackend:
    """What the node reports as the engine's backend (PolicyEngine.backend's name) for a served bundle."""
    url: str
    name: str = "remote"


class RemoteEngine:
    """PolicyEngine's interface over the network: ``predict`` sends one chunk request to dp-serve."""

    def __init__(self, bundle: str | Path, url: str, timeout_s: float = 0.5, tls: ClientTls | None = None,
                 warm_up: bool = True):
        self.bundle = read_manifest(bundle)
        verify_norm_inventory(self.bundle)  # the BatchNorm rule holds for served policies too
        self.spec = self.bundle.policy
        self.image_shapes, self.low_dim_sizes = self.spec.image_shapes, self.spec.low_dim_sizes
        self.keys, self.n_obs_steps = self.spec.keys, self.spec.n_obs_steps
        self.horizon, self.action_dim = self.spec.horizon, self.spec.action.dim
        self.sha = self.bundle.graphs_sha256
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server_url {url!r}: expected http://HOST:PORT or https://HOST:PORT (dp-serve's address)")
        if tls is not None and tls.configured and parts.scheme != "https":
            raise ConfigError(f"server_url {url}: TLS files are set but the URL is http; use https://")
        self.url = url.rstrip("/")
        self.backend = RemoteBackend(self.url)
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = (tls or ClientTls()).context() if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        self._local = threading.local()  # one kept-alive connection per calling thread
        self.last_batch = 0  # robots in the server's batch of the last chunk
        self.last_server_ms = 0.0  # that batch's compute time on the server (the rest of a round trip is transport)
        hosted = self._hosted()
        if self.sha not in hosted:
            paths = ", ".join(h.get("path", "?") for h in hosted.values()) or "nothing"
            raise BundleError(f"{self.url} does not host this policy: bundle {bundle} has graphs_sha256 "
                              f"{self.sha[:16]}..., the server hosts {paths}; start dp-serve with this bundle "
                              "(or give the node the bundle the server hosts)")
        served = hosted[self.sha]
        self.can_inpaint = bool(served.get("inpaint"))
        self.masks_per_step = False  # a request carries one mask; the per-step rule is not sent (yet)
        self.takes_noise = False  # a request carries the seed; the server draws the noise
        self.provider = f"remote:{self.url} ({served.get('provider', '?')})"
        self.precision = served.get("precision", "fp32")
        self.recorded_error = "as recorded in the served bundle"
        self.warmup_latency_s = 0.0
        if warm_up:
            self.warm_up()

    # -- transport -----------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = (http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
                    if self.tls is not None else http.client.HTTPConnection(self.host, self.port, timeout=timeout))
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> bytes:
        """One request; any failure is a ServerError naming the server and what to check."""
        where = f"{self.url}{path}"
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: reconnect once
            conn = self._connection(timeout)
            try:
                conn.request(method, ROUTE + path, body=body,
                             headers={"Content-Type": "application/octet-stream"} if body else {})
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop_connection()
                if attempt == 0:
                    continue
                raise ServerError(f"{where}: the server closed the connection ({type(e).__name__})") from None
            except (socket.timeout, TimeoutError):
                self._drop_connection()
                raise ServerError(f"{where}: no reply within {timeout * 1e3:.0f} ms (server_timeout)") from None
            except ssl.SSLError as e:
                self._drop_connection()
                raise ServerError(f"{where}: TLS handshake failed ({e.reason or e}); check server_tls_ca (and "
                                  "server_tls_cert/key if the server requires client certificates)") from None
            except OSError as e:
                self._drop_connection()
                raise ServerError(f"{where} does not answer ({e.strerror or e}); is dp-serve running there?") from None
            if resp.status != 200:
                raise ServerError(f"{where} refused the request (HTTP {resp.status}): {_error_text(data)}")
            return data
        raise AssertionError("unreachable")

    def _hosted(self) -> dict:
        data = self._request("GET", "/health", None, max(self.timeout_s, 5.0))
        try:
            return json.loads(data)["bundles"]
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{self.url}/health: not a dp-serve server (unexpected reply)") from None

    # -- the engine interface ------------------------------------------------------------------
    def predict(self, history: Mapping[str, np.ndarray], seed: int | None = None, known: np.ndarray | None = None,
                mask: np.ndarray | None = None, timeout_s: float | None = None, hold: Hold = every_step) -> Prediction:
        obs = {k: np.asarray(v, np.float32) if k in self.low_dim_sizes else np.asarray(v) for k, v in history.items()}
        validate_obs({k: v[None] for k, v in obs.items()}, self.image_shapes, self.low_dim_sizes, self.n_obs_steps)
        if known is not None and not self.can_inpaint:
            raise BundleError(f"the bundle served at {self.url} has no inpainting step graph; re-export it with "
                              "dp-export --inpaint to use chunk_transition inpaint or soft_inpaint")
        if hold is not every_step:
            raise ConfigError("backend remote sends one inpainting mask per chunk; chunk_transition "
                              "soft_inpaint_early needs a local backend (onnxruntime or torchscript)")
        body = encode_request(ChunkRequest(self.sha, obs, seed, known, mask))
        t0 = time.perf_counter()
        reply = decode_reply(self._request("POST", "/chunk", body, timeout_s or self.timeout_s))
        latency = time.perf_counter() - t0
        if reply.actions.shape != (self.horizon, self.action_dim) or not np.all(np.isfinite(reply.actions)):
            raise ServerError(f"{self.url}: reply actions {reply.actions.shape} are not ({self.horizon}, "
                              f"{self.action_dim}) finite values")
        self.last_batch, self.last_server_ms = reply.batch, reply.server_ms
        return Prediction(reply.actions, latency, seed)

    def warm_up(self) -> float:
        """One round trip with zero observations: inference_lead auto's first latency estimate."""
        obs = {k: np.zeros((self.n_obs_steps, *s), np.uint8) for k, s in self.image_shapes.items()}
        obs.update({k: np.zeros((self.n_obs_steps, n), np.float32) for k, n in self.low_dim_sizes.items()})
        self.predict(obs, seed=0, timeout_s=max(self.timeout_s, 10.0))
        self.warmup_latency_s = min(self.predict(obs, seed=0, timeout_s=max(self.timeout_s, 10.0)).latency_s
                                    for _ in range(3))
        return self.warmup_latency_s


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace").strip() or "(no detail)"
