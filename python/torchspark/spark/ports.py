"""HTTP endpoints on a port taken from a range: :func:`parse_ports`, :func:`serve`.

Each executor host serves its ``/metrics`` on the first free port of a range
(several executors of one host each take their own), and so does the driver.
A port another process listens on is skipped; any other error (a bad host
name, say) is raised at once, as is a range with no free port (naming it).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# Errors that mean "this port, not this host": try the next one.
_TAKEN = {errno.EADDRINUSE, errno.EACCES}


def parse_ports(text: str, what: str = "ports") -> range:
    """``"9450-9469"`` (both included) or ``"9450"``; ValueError naming ``what``."""
    try:
        first, _, last = str(text).strip().partition("-")
        ports = range(int(first), int(last or first) + 1)
    except ValueError:
        raise ValueError(f"{what}: expected a port or a range 'FIRST-LAST', got {text!r}") from None
    if not ports or ports.start < 1 or ports.stop > 65536:
        raise ValueError(f"{what}: expected ports in 1-65535, FIRST <= LAST, got {text!r}")
    return ports


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = False  # a port in use must fail to bind, not be shared


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per scrape
        pass


def serve(app: Callable[..., Any], host: str, ports: range) -> WSGIServer:
    """``app`` (WSGI) served on ``host`` at the first port of ``ports`` that
    binds, in a daemon thread; ``server.server_port`` is the port. Stop it with
    ``server.shutdown(); server.server_close()``."""
    for port in ports:
        try:
            server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
        except OSError as e:
            if e.errno in _TAKEN:
                continue
            raise
        thread = threading.Thread(target=server.serve_forever, name="torchspark-http", daemon=True)
        thread.start()
        return server
    raise OSError(
        errno.EADDRINUSE,
        f"no free port in {ports.start}-{ports.stop - 1} on {host or 'all interfaces'}"
        " (set a wider range)",
    )
