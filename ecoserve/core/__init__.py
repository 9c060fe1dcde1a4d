"""The core: every decision of the engine, with no I/O at all.

- ``knobs``: knobs, the search space they span, configurations as index tuples.
- ``cost``: the normalised energy-plus-latency cost and its baseline.
- ``batching``: the batching policy (when a batch leaves, how big it is).
- ``controller``: finished batches into windows, costs, and the tuner's next configuration.
- ``tuner``: the ask/tell contract every tuner in ``tuners/`` implements.
- ``engine``: queues, policy and controller as one object that orders events: a driver tells
  it what happened and carries out its answers (``Dispatch``, ``WindowClosed``,
  ``ApplyConfig``, ``WaitUntil``, ``Drained``) one at a time.
- ``assembly``: the engine built from ``EngineSettings`` and a list of knobs.

No clock, thread, socket or file: a driver supplies time and carries out the answers. May
import only the standard library's pure parts, numpy and (in ``assembly`` alone, for the
tuner registry) ``tuners``; contracts in ``pyproject.toml`` hold it to that.
"""
