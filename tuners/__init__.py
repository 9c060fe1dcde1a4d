"""Tuners: one module per algorithm behind the ask/tell interface of ``ecoserve.core.tuner``.

Sans-IO like the core: a tuner is told each window's cost and asked for the next
configuration. May import only ``ecoserve.core`` (and numpy, scikit-optimize).
"""

from ecoserve.core.tuner import Tuner
from tuners.bayes import Bayesian
from tuners.dvfs import DVFS
from tuners.ecogd import EcoGD
from tuners.fixed import Fixed
from tuners.grid import Grid
from tuners.linear import Linear
from tuners.mab import MAB, MABJoint
from tuners.random_search import Random
from tuners.registry import TUNERS, make_tuner

__all__ = [
    "DVFS",
    "MAB",
    "TUNERS",
    "Bayesian",
    "EcoGD",
    "Fixed",
    "Grid",
    "Linear",
    "MABJoint",
    "Random",
    "Tuner",
    "make_tuner",
]
