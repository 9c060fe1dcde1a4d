"""EcoGD: the EcoEdgeInfer hill climber over knob indices, plus strategies.

The climber (``climber``) is the paper's algorithm: a centre, its ±1 neighbours on each
knob, additive CPU–GPU diagonal estimates, expiry of old measurements, a random jump after
``max_loops`` stays. Each addition is a small object it consults, in a module of its own:

- ``scan``: batch sizes measured once before climbing, guided by a fitted cost curve;
- ``axis_scans``: with one batch-size knob per model (a shared board), each model's scan
  in turn; the other batch strategies work on one batch knob and stand by then;
- ``probes``: a settled centre now and then tries a far batch size (a rugged landscape);
- ``losses``: clear losers live longer, and batch neighbours' losses are inherited;
- ``load_following``: a change-point test on the arrival rate, a memory of load levels;
- ``capacity``: never choose nor measure what cannot carry the recent peak (the rate of its
  busy seconds, bursts undiluted by idle gaps), by a batch-time model.

``tuner.EcoGD`` wires them to the options (the registry's ``ecogd``); ``EcoGDOriginal``
(``ecogd-original``) is the climber with every strategy off.
"""

from tuners.ecogd.load_following import MAX_LEVELS
from tuners.ecogd.tuner import EcoGD, EcoGDOriginal

__all__ = ["MAX_LEVELS", "EcoGD", "EcoGDOriginal"]
