"""Device twins: how long a batch takes and what the board draws, as functions of its clocks.

- ``base``: the ``DeviceTwin`` contract and the analytic model (no measured data).
- ``fitted``: twins fitted to measured Jetson data, loaded from ``twins/data/``.
- ``fitting``: the fit itself (least squares over the measured points), behind
  ``scripts/fit_twin.py``.
- ``scaled``: another model on a twin's board (its batch time scaled by a cost factor).
- ``profile_table``: a twin read from a board's measured profile table (``ecoserve profile``).
- ``governors``: models of the OS frequency governors (schedutil, nvhost_podgov), for knobs
  a tuner hands to the OS; the replay and the virtual device both run them.
- ``virtual_device``: an actuator and a meter backed by a twin, so the real-time runtime runs
  with no hardware.

May import ``ecoserve.core`` (knobs) and ``devices`` (board tables, the device interface);
never a driver or a face.
"""
