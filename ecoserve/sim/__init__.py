"""The virtual-time driver: the sans-IO engine replayed over an arrival trace on a twin.

- ``driver``: :class:`Simulator` and :func:`simulate`, the discrete-event loop (no sleeping).
- ``governors``: the OS governor models (schedutil, nvhost_podgov), re-exported from
  ``twins.governors``, which the virtual device runs too.
- ``oracle``: the static and dynamic oracles a tuner is scored against.
- ``shared_board``: several models (and engines) on one board: shared clocks, one meter.
- ``joint_oracle``: the oracles for several models on one board.

May import ``ecoserve.core``, ``tuners``, ``twins`` and ``traces``; never the real-time
runtime (``ecoserve.runtime``), the hardware back-ends or any face.
"""
