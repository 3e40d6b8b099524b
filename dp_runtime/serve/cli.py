"""dp-serve: host bundles on Ray Serve for a fleet of robots (nodes with server_url set).

    dp-serve BUNDLE [BUNDLE ...] [--host 127.0.0.1] [--port 8000] [--replicas 1] [--max-batch 64]
             [--batch-wait-ms 0] [--backend auto] [--device auto] [--threads 0]
             [--tls-cert CERT --tls-key KEY]

Every bundle is verified here first (as load_bundle does on a robot: hashes, graph scans, the
BatchNorm refusal) and refused with one line; then a local Ray instance starts, Serve's HTTP proxy
listens on host:port (HTTPS with --tls-cert/--tls-key) and the policy deployment answers POST
/dp/chunk. Runs until SIGINT/SIGTERM. Client certificates cannot be required: Ray Serve 2.60 hands
its CA option to uvicorn without ``ssl_cert_reqs``, so a client without a certificate is still
accepted; dp-serve therefore does not offer the option (restrict who reaches the port instead).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import DpRuntimeError
from ..wire import ROUTE

log = logging.getLogger("dp_serve")

# Serve kills a proxy that is not ready within 5 s three times running; on a loaded 2-core robot-side
# host its start-up (uvicorn, starlette imports) took longer than that, so these checks wait longer.
SLOW_HOST_CHECKS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}
# Part of Serve's own "throughput optimized" set (RAY_SERVE_THROUGHPUT_OPTIMIZED, minus direct ingress,
# which needs HAProxy, and gRPC between actors, which measured no better here): request code on the
# replica's main loop, no per-request logging to stderr (log_to_driver is off anyway), access-log lines
# buffered (flushed on errors). bench/serve.py: 1-2 ms less per round trip on 2 cores.
LEAN_REQUEST_PATH = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                     "RAY_SERVE_LOG_TO_STDERR": "0", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"}


def check_bundles(paths: list[str], backend: str, device: str) -> list[str]:
    """Each bundle as load_bundle verifies it (fails fast, before Ray starts); -> resolved paths."""
    from ..engine import load_bundle
    out = []
    for p in paths:
        engine = load_bundle(p, backend=backend, device=device, warm_up=False)
        print(f"bundle {p}: graphs_sha256 {engine.bundle.graphs_sha256[:16]}..., {engine.provider}, "
              f"inpaint {'yes' if engine.can_inpaint else 'no'}", flush=True)
        out.append(str(Path(p).resolve()))
    return out


def check_tls(args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise DpRuntimeError("--tls-cert and --tls-key go together (the server's certificate and its key)")
    for flag in ("tls_cert", "tls_key"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise DpRuntimeError(f"--{flag.replace('_', '-')} {path}: no such file")
    if args.tls_cert:
        import ssl
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
        except (ssl.SSLError, OSError) as e:
            raise DpRuntimeError(f"TLS files do not load ({e}): --tls-cert must be a PEM certificate, --tls-key "
                                 "its private key") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dp-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+", help="bundle directories (dp-export output)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="policy replicas (each hosts every bundle)")
    p.add_argument("--max-batch", type=int, default=64, help="most chunks computed in one call")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="how long a batch waits to fill (0: it takes the requests that queued while the last one "
                        "computed; waiting costs every chunk the wait plus ~2 ms of Serve's timer at light load)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="inference threads per replica (0: backend default)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", default=None, help="the certificate's private key")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[dp-serve] %(levelname)s %(message)s")
    if args.max_batch < 1 or args.batch_wait_ms < 0 or args.replicas < 1:
        p.error("--max-batch and --replicas must be >= 1, --batch-wait-ms >= 0")
    try:
        check_tls(args)
        bundles = check_bundles(args.bundles, args.backend, args.device)
    except DpRuntimeError as e:
        print(f"dp-serve: {e}", file=sys.stderr)
        return 2
    if not args.tls_cert:
        log.warning("TLS IS OFF: robots talk to this server in plain HTTP (observations and commands readable and "
                    "forgeable on the network). Use --tls-cert/--tls-key outside a closed lab.")
    for name, value in {**SLOW_HOST_CHECKS, **LEAN_REQUEST_PATH}.items():
        os.environ.setdefault(name, value)  # read by Serve's actors, which inherit this environment
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from .app import PolicyDeployment, ServeConfig
    # a cluster of its own (address="local"): never join, and redeploy over, another dp-serve on this host
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    serve.start(http_options=HTTPOptions(host=args.host, port=args.port, ssl_certfile=args.tls_cert,
                                         ssl_keyfile=args.tls_key))
    cfg = ServeConfig(tuple(bundles), args.backend, args.device, args.threads, args.max_batch,
                      args.batch_wait_ms / 1e3)
    serve.run(PolicyDeployment.options(num_replicas=args.replicas).bind(cfg), name="dp_runtime",
              route_prefix=ROUTE, blocking=False)
    scheme = "https" if args.tls_cert else "http"
    print(f"dp-serve: serving {len(bundles)} bundle(s) at {scheme}://{args.host}:{args.port}{ROUTE} "
          f"({args.replicas} replica(s), batches up to {args.max_batch}, wait {args.batch_wait_ms:g} ms)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("dp-serve: stopping", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
