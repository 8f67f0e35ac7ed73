"""Loopback helpers for the HTTP tests: free ports, and fake upstreams (raw sockets)
that misbehave on purpose (stall, garbage, errors). Fakes, named as such."""

import socket
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_request(conn) -> tuple[bytes, bytes]:
    """Read one HTTP request (head and body) from ``conn``; returns (path, body)."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head.split(b" ")[1], body


def fake_upstream(handler):
    """Serve ``handler(conn, stop_event)`` per connection on a loopback port; returns (url, close)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=handler, args=(conn, stop), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", lambda: (stop.set(), srv.close())


def wait_http_ok(url: str, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 or ``timeout`` seconds pass; True if it came up."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def start_app(settings, backend=None):
    """``stopwise serve``'s app (``create_app(settings, backend)``) under uvicorn on a loopback port in a
    thread; returns (url, server, thread). Stop it with ``server.should_exit = True; thread.join(5)``."""
    import time

    import uvicorn

    from stopwise.server.app import create_app

    app = create_app(settings, backend=backend)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, t

