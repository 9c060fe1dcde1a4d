"""The real-time driver: the sans-IO engine driven by asyncio on a real or virtual device.

- ``driver``: :class:`Runtime`, the dispatcher loop (queue, worker thread, meter, actuator).
- ``build``: a runtime from ``EngineSettings`` (device opened, saved baseline read).
- ``device_spec``: opening a device from its ``--device`` spec (sysfs, virtual, none, auto).
- ``collate``: stacking items into a batch and splitting results back.
- ``state_files``: the saved baseline.
- ``tuning_state``: the tuner's state file, resumed at start and saved after each window.

May import ``ecoserve.core``, ``tuners``, ``devices`` and ``twins`` (for the virtual device),
never the simulator (``ecoserve.sim``) nor any face (server, decorator, CLI, replay).
"""
