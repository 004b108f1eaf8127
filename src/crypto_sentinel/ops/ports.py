"""Free local ports for the processes the benchmarks and tests start (a broker wants a run
of neighbouring ports: its client and controller listeners)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """A free port followed by count - 1 free neighbours."""
    for _ in range(50):
        port = free_port()
        try:
            for p in range(port, port + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no run of {count} free ports")
