"""Serving a fleet: dp-serve hosts bundles on Ray Serve with batching across robots (app.py, cli.py);
nodes reach it through the remote engine (engine/remote.py) over the wire format in protocol.py."""
