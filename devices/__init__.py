"""Hardware back-ends: what ecoserve reads and writes on a real board, behind one interface.

- ``base``: the ``Actuator`` / ``PowerMeter`` / ``Device`` contracts and their errors.
- ``cpufreq``, ``devfreq``, ``composite``: knob actuators on sysfs, and several as one.
- ``meters``: power meters (INA3221, RAPL, NVML, Zeus, an estimate).
- ``discovery``: what this box has and what can be controlled; ``boards``: the frequency
  tables and sensor layouts of known boards.
- ``sysfs``: reading and writing under a configurable root; ``safety``, ``watchdog``:
  restoring the knobs on every exit path and when the loop stalls.
- ``testing``: fake sysfs trees of real boards, for tests of the code above.

Hardware only: may import ``ecoserve.core.knobs`` (the ``Knob`` type) and nothing of the
engine, the twins, the drivers or the faces.
"""
