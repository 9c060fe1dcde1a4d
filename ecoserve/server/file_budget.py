"""How many connections fit under the open-file limit, leaving room for the daemon's own files.

Every connection holds a file descriptor, and so does every read of a clock or a power
sensor, the restore record, the state file, the model's files and the logs. Connections
allowed up to the limit itself take them all in a flood of idle clients, and then reading a
clock fails with EMFILE. So ``max_connections`` is clamped to the limit less ``RESERVE``
(said once, with how to raise the limit), and a limit too small to leave room for even a
few connections is refused at start.

Connections turned away at the limit hold a descriptor too, for the second or so they wait
for their request and linger after the 503 (closing at once, with the request unread, makes
the kernel send a reset that loses the answer). They may use whatever the limit leaves
beyond the served connections, so a flood is answered, not reset, while it fits.
"""

from __future__ import annotations

#: Descriptors kept for the daemon's own files (sysfs, meter, records, model, logs).
RESERVE = 64
#: Fewer connections than this is no server: refuse to start instead.
MIN_CONNECTIONS = 8


def connection_budget(max_connections: int, open_files: int) -> tuple[int, str | None]:
    """(connections to allow, a warning when clamped); ValueError when nothing useful fits."""
    room = open_files - RESERVE
    if room < MIN_CONNECTIONS:
        raise ValueError(
            f"the open-file limit {open_files} leaves no room for connections ({RESERVE} are "
            "kept for the daemon's own files); raise it (ulimit -n, LimitNOFILE= in the unit)"
        )
    if max_connections <= room:
        return max_connections, None
    return room, (
        f"max_connections {max_connections} does not fit under the open-file limit "
        f"{open_files} ({RESERVE} kept for clocks, sensors and state files): serving at most "
        f"{room} connections; raise the limit (ulimit -n, LimitNOFILE= in the unit) for more"
    )


#: Refused connections allowed to linger however tight the limit (a small, bounded cost).
MIN_LINGERING = 32


def lingering_budget(connections: int, open_files: int) -> int:
    """How many refused connections may wait for their request and linger after the 503."""
    return max(MIN_LINGERING, open_files - RESERVE - connections)
