"""The robot <-> server wire format: one HTTP POST per chunk, an .npz body each way (no pickle).

Everything a chunk depends on travels with its request (observation history, noise seed,
inpainting inputs, the graphs_sha256 naming the policy), so any replica can serve any robot and a
restarted server needs nothing from before. Imports numpy only: the node side needs no Ray.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from .errors import ServerError

ROUTE = "/dp"  # the application's route prefix; POST {ROUTE}/chunk, GET {ROUTE}/health
OBS_PREFIX = "obs."


@dataclass
class ChunkRequest:
    graphs_sha256: str
    observation: dict[str, np.ndarray]  # the history as PolicyEngine.predict takes it (unbatched)
    seed: int | None  # noise seed (None: the server draws fresh noise)
    known: np.ndarray | None = None  # inpainting: raw actions (horizon, A)
    mask: np.ndarray | None = None  # and their weights (horizon,) bool or float in [0, 1]


@dataclass
class ChunkReply:
    actions: np.ndarray  # (horizon, A) raw actions
    batch: int  # how many robots' chunks the server computed in the same call
    server_ms: float  # the batch's compute time on the server


def _pack(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return buf.getvalue()


def _unpack(body: bytes, what: str) -> tuple[dict[str, np.ndarray], dict]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as e:  # a truncated or foreign body: name it, never a traceback
        raise ServerError(f"{what}: not a dp_runtime {what} ({type(e).__name__}: {e})") from None
    return arrays, meta


def encode_request(r: ChunkRequest) -> bytes:
    arrays = {OBS_PREFIX + k: np.ascontiguousarray(v) for k, v in r.observation.items()}
    if r.known is not None:
        arrays.update(known=np.asarray(r.known, np.float32), mask=np.asarray(r.mask))
    return _pack(arrays, {"graphs_sha256": r.graphs_sha256, "seed": r.seed})


def decode_request(body: bytes) -> ChunkRequest:
    arrays, meta = _unpack(body, "request")
    seed = meta.get("seed")
    if not isinstance(meta.get("graphs_sha256"), str) or not (seed is None or isinstance(seed, int)):
        raise ServerError("request: expected graphs_sha256 (a string) and seed (an integer or null)")
    obs = {k[len(OBS_PREFIX):]: v for k, v in arrays.items() if k.startswith(OBS_PREFIX)}
    return ChunkRequest(meta["graphs_sha256"], obs, seed, arrays.get("known"), arrays.get("mask"))


def encode_reply(r: ChunkReply) -> bytes:
    return _pack({"actions": np.asarray(r.actions, np.float32)}, {"batch": r.batch, "server_ms": r.server_ms})


def decode_reply(body: bytes) -> ChunkReply:
    arrays, meta = _unpack(body, "reply")
    if "actions" not in arrays:
        raise ServerError("reply: no actions in the server's reply")
    return ChunkReply(arrays["actions"], int(meta.get("batch", 1)), float(meta.get("server_ms", 0.0)))
