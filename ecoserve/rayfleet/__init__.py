"""The fleet on Ray Serve: one replica per board, each running the daemon's service, an ingress
with the daemon's HTTP API, and the fleet policy (``ecoserve.core.fleet``) deciding which
boards serve. Needs ``pip install ecoserve[fleet]`` (Ray Serve) for ``app``; ``config``,
``board`` and ``ingress`` run without Ray."""
