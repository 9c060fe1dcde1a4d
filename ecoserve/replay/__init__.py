"""Trace replay: compare tuners on arrival traces, in virtual time or against a live daemon.

``runner`` replays on the device twin (``ecoserve.sim.driver``), ``real`` replays over HTTP,
``report`` turns either into the same records, table and files, ``plots`` draws them and
``suite`` defines the paper's evaluation.

A face over the virtual-time driver: may import ``ecoserve.sim``, ``ecoserve.core``,
``twins`` and ``traces``, never the real-time runtime (real mode is an HTTP client).
"""
