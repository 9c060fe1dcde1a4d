"""The governor models, kept importable from here: they live in ``twins.governors``.

They sit in the twins floor, below both drivers, so that the virtual device can run the
same models (twins may not import ``ecoserve.sim``).
"""

from twins.governors import UtilisationGovernor, podgov, schedutil

__all__ = ["UtilisationGovernor", "podgov", "schedutil"]
