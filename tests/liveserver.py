"""A real uvicorn, with genrekit's connection protocol, serving an app in a thread of the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def live_server(app, request_timeout: float = 30.0):
    """Serve ``app`` on a free loopback port until the block ends; yields the port."""
    import uvicorn

    from genrekit_cli.apps.serve import TimedH11Protocol

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    TimedH11Protocol.request_timeout = request_timeout
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=TimedH11Protocol, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        TimedH11Protocol.request_timeout = 30.0
