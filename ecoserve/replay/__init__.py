"""Trace replay: compare tuners on arrival traces, in virtual time or against a live daemon.

``runner`` replays on the device twin (``ecoserve.simulator``), ``real`` replays over HTTP,
``report`` turns either into the same records, table and files, ``plots`` draws them and
``suite`` defines the paper's evaluation.
"""
