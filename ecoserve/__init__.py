"""ecoserve: energy- and latency-aware inference serving for edge devices.

The folders are the floors of one engine (each package's docstring says what it may import;
``pyproject.toml``'s import contracts hold them to it):

- ``ecoserve.core``: every decision, with no I/O (knobs, cost, batching, controller, engine).
- ``ecoserve.runtime``: the real-time driver (asyncio, a real or virtual device).
- ``ecoserve.sim``: the virtual-time driver (a trace on a device twin, the oracles).
- faces over the drivers: ``ecoserve.server`` (HTTP), ``ecoserve.decorator``,
  ``ecoserve.replay`` (the trace-replay benchmark), ``ecoserve.profiling`` (sweeping a board),
  and ``ecoserve.cli`` over them all.

Beside the package: ``tuners`` (ask/tell tuners over the core), ``devices`` (hardware
back-ends), ``twins`` (models of the boards), ``traces`` (arrival traces).
"""
