"""The server's counters in the Prometheus text format, on an optional HTTP endpoint.

render(stats, exporters) turns Server.stats() (sessions, and each service's part) into
the text format (version 0.0.4) that Prometheus scrapes; MetricsEndpoint
serves it at /metrics from a thread of its own (http.server from the standard
library: the format is a few lines, not worth a dependency). The same
counters are there in-process: Server.stats().
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, float]] = []

    def add(self, value: Any, **labels: Any) -> None:
        self.samples.append((_labels(**labels), float(value or 0)))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{labels} {int(value) if value.is_integer() else value}"


Family = Callable[[str, str, str], _Family]  # fam(name, kind, help): a metric family, made once


def render(stats: dict[str, Any], exporters: Iterable[tuple[str, Callable[[Any, Family], None]]] = ()) -> str:
    """The text format of Server.stats(): the sessions', then each (stats key, export) of `exporters`
    (the server's services: Service.metrics) adds the families of its part of the statistics."""
    fams: dict[str, _Family] = {}

    def fam(name: str, kind: str, help_text: str) -> _Family:
        f = fams.get(name)
        if f is None:
            f = fams[name] = _Family(name, kind, help_text)
        return f

    sessions = stats.get("sessions", [])
    by_transport: dict[str, int] = {}
    for s in sessions:
        by_transport[str(s.get("transport"))] = by_transport.get(str(s.get("transport")), 0) + 1
    g = fam("broker_sessions", "gauge", "Live sessions, by transport.")
    for transport in ("shared memory", "socket"):
        g.add(by_transport.get(transport, 0), transport=transport)
    for s in sessions:
        lab = {"connection_id": s.get("connection_id"), "transport": s.get("transport")}
        fam("broker_session_requests_total", "counter", "Requests a session made.").add(s.get("requests"), **lab)
        fam("broker_session_completions_total", "counter", "Requests the server completed.").add(
            s.get("completions"), **lab)
        fam("broker_session_bytes_in_total", "counter", "Bytes from the client.").add(s.get("bytes_in"), **lab)
        fam("broker_session_bytes_out_total", "counter", "Bytes to the client.").add(s.get("bytes_out"), **lab)
        fam("broker_session_outstanding", "gauge", "Requests not completed yet.").add(s.get("outstanding"), **lab)
    for key, export in exporters:  # each built-in service's own (Service.metrics)
        export(stats.get(key), fam)
    return "\n".join(line for f in fams.values() for line in f.lines()) + "\n"


class MetricsEndpoint:
    """GET /metrics on host:port (port 0: one the kernel picks; see .address), in a thread."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str = "127.0.0.1", port: int = 0,
                 exporters: Iterable[tuple[str, Callable[[Any, Family], None]]] = ()) -> None:
        exporters = tuple(exporters)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                try:
                    body = render(stats(), exporters).encode()
                except Exception as e:  # the server is stopping, say: the scraper sees a 500
                    self.send_error(500, f"no statistics: {e}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        Handler.timeout = 5.0  # a client that connects and says nothing cannot hold the server's stop

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = False  # server_close() waits for a scrape in progress
        self.address = self._http.server_address[:2]
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"broker-metrics {self.address}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)
