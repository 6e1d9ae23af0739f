"""`vitedge run --serve`: the annotated stream as MJPEG plus live metrics, on a small web page.

Standard-library HTTP server in a thread (no web framework for three routes): `/` the page,
`/stream.mjpg` the annotated frames (multipart/x-mixed-replace), `/metrics.json` the numbers the
page polls, `/metrics` the run's Prometheus metrics (vitedge.live.metrics; `--metrics` serves only
that). Bound to 127.0.0.1 unless the user asks otherwise (and warned when not: no authentication).

Hostile or careless clients are bounded: at most `max_connections` at a time (one thread each;
the next ones get 429 from the accepting thread), a request's line and headers must arrive within
`header_timeout_s` (a slow drip is cut), and a client that goes away mid-stream is a quiet end of
its thread, never a traceback on the run's stderr.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vitedge.errors import InputError

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitedge run — {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; background: #111; color: #eee; }}
main {{ display: flex; gap: 1.5rem; flex-wrap: wrap; }}
img {{ max-width: 100%; border: 1px solid #444; }}
table {{ border-collapse: collapse; min-width: 18rem; }}
td {{ padding: .25rem .6rem; border-bottom: 1px solid #333; }}
td.v {{ text-align: right; font-variant-numeric: tabular-nums; }}
.drift {{ color: #ff6b6b; font-weight: bold; }} .pass {{ color: #69db7c; }}
</style></head>
<body><h1>{title}</h1>
<main><img id="stream" src="/stream.mjpg" alt="annotated camera stream">
<table id="metrics">
<tr><td>frames</td><td class="v" id="frames">–</td></tr>
<tr><td>FPS</td><td class="v" id="fps">–</td></tr>
<tr><td>latency p50 / p95 (ms)</td><td class="v" id="latency">–</td></tr>
<tr><td>shadowed frames</td><td class="v" id="shadowed">–</td></tr>
<tr><td>rolling agreement</td><td class="v" id="agreement">–</td></tr>
<tr><td>rolling KL</td><td class="v" id="kl">–</td></tr>
<tr><td>rolling cosine</td><td class="v" id="cosine">–</td></tr>
<tr><td>status</td><td class="v" id="status">–</td></tr>
<tr><td>top-1</td><td class="v" id="top1">–</td></tr>
</table></main>
<script>
function fmt(v, d) {{ return v === null || v === undefined ? "–" : Number(v).toFixed(d); }}
async function poll() {{
  try {{
    const m = await (await fetch("/metrics.json", {{cache: "no-store"}})).json();
    document.getElementById("frames").textContent = m.frames;
    document.getElementById("fps").textContent = fmt(m.fps, 1);
    document.getElementById("latency").textContent = fmt(m.latency_p50_ms, 2) + " / " + fmt(m.latency_p95_ms, 2);
    document.getElementById("shadowed").textContent = m.shadowed;
    document.getElementById("agreement").textContent = m.rolling_agreement === null ? "–" : fmt(100 * m.rolling_agreement, 1) + "%";
    document.getElementById("kl").textContent = fmt(m.rolling_kl, 4);
    document.getElementById("cosine").textContent = fmt(m.rolling_cosine, 4);
    const s = document.getElementById("status"); s.textContent = m.status; s.className = "v " + m.status;
    document.getElementById("top1").textContent = m.top1 || "–";
    document.body.dataset.updated = String(m.frames);
  }} catch (e) {{ document.getElementById("status").textContent = "disconnected"; }}
}}
poll(); setInterval(poll, 500);
</script></body></html>
"""


def parse_address(address: str, option: str = "--serve") -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', localhost) -> (host, port), refused unless the port is 0-65535."""
    host, _, port_text = str(address).rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or not host:
        raise InputError(f"{option} {address!r} is not HOST:PORT with a port 0-65535",
                         f"e.g. {option} 127.0.0.1:8080")
    return host, int(port_text)


def exposure(address: str) -> str | None:
    """A warning when `address` serves beyond this machine (the page has no authentication)."""
    host, port = parse_address(address)
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if local:
        return None
    return (f"the live page and camera stream on {host}:{port} have no authentication: anyone who can "
            f"reach this machine{' (on every interface)' if host in ('0.0.0.0', '::') else ''} can watch "
            "them; serve on 127.0.0.1 and use an SSH tunnel or an authenticating proxy to share them")


MAX_CONNECTIONS = 32  # a viewer holds one for its stream, and one at a time for its polls
HEADER_TIMEOUT_S = 10.0
_BUSY = b"too many clients; try again later\r\n"
_TOO_MANY = (b"HTTP/1.0 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
             b"Content-Length: " + str(len(_BUSY)).encode() + b"\r\nConnection: close\r\n\r\n" + _BUSY)


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections and no tracebacks for clients that go away."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type, *, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections answered 429
        self.dropped = 0  # connections that failed (reset, timed out, closed mid-answer)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            try:  # answered from the accepting thread: short, and never blocking on the client
                request.settimeout(0.5)
                request.sendall(_TOO_MANY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Counted, not printed: a client's failure is not the run's (socketserver prints a traceback)."""
        self.dropped += 1


class LiveServer:
    """Serves the newest annotated JPEG and the metrics dict the live loop publishes."""

    def __init__(self, address: str, title: str, *, metrics: Any = None, with_page: bool = True,
                 option: str = "--serve", max_connections: int = MAX_CONNECTIONS,
                 header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
        """`metrics`: a RunMetrics served at /metrics; `with_page=False` serves only that."""
        host, port = parse_address(address, option)
        self._jpeg: bytes | None = None
        self._metrics: dict[str, Any] = {}
        self._changed = threading.Condition()
        self._closing = False
        page = PAGE.format(title=html.escape(title, quote=True)).encode()
        server, show_page = self, with_page

        class Handler(BaseHTTPRequestHandler):
            timeout = header_timeout_s  # each read or write; the whole header has the same deadline

            def log_message(self, *args: Any) -> None:  # the run's logs are the JSONL, not stderr
                pass

            def setup(self) -> None:
                super().setup()
                # a header dripped a byte at a time would reset the socket timeout at every byte
                self._deadline = threading.Timer(header_timeout_s, self._cut)
                self._deadline.daemon = True
                self._deadline.start()

            def _cut(self) -> None:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def parse_request(self) -> bool:  # reads the headers
                try:
                    return super().parse_request()
                finally:
                    self._deadline.cancel()

            def finish(self) -> None:
                self._deadline.cancel()
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] == "/metrics" and metrics is not None:
                    from prometheus_client import CONTENT_TYPE_LATEST

                    self._send(200, CONTENT_TYPE_LATEST, metrics.text())
                elif not show_page:
                    self._send(404, "text/plain", b"not found (this server has only /metrics)")
                elif self.path == "/":
                    self._send(200, "text/html; charset=utf-8", page)
                elif self.path.startswith("/metrics.json"):
                    with server._changed:
                        body = json.dumps(server._metrics).encode()
                    self._send(200, "application/json", body)
                elif self.path.startswith("/stream.mjpg"):
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                last = None
                try:
                    while True:
                        with server._changed:
                            server._changed.wait_for(
                                lambda: server._closing or (server._jpeg is not None
                                                            and server._jpeg is not last), timeout=1.0)
                            if server._closing:
                                return
                            jpeg = server._jpeg
                        if jpeg is None or jpeg is last:
                            continue
                        last = jpeg
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                except OSError:
                    return

        try:
            self.httpd = _BoundedServer((host, port), Handler, max_connections=max_connections)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is already in use",
                                 f"pick another {option} port, or stop what is using it") from None
            raise InputError(f"cannot serve on {host}:{port} ({exc.strerror})",
                             f"use {option} 127.0.0.1:PORT") from None
        self.address = f"http://{host}:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vitedge-serve",
                                        daemon=True)
        self._thread.start()

    def publish(self, jpeg: bytes | None, metrics: dict[str, Any]) -> None:
        with self._changed:
            if jpeg is not None:
                self._jpeg = jpeg
            self._metrics = metrics
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
