"""The server's counters in the Prometheus text format, on an optional HTTP endpoint.

prometheus-client (the `metrics` extra: pip install 'shmbroker[metrics]') writes the exposition:
render(stats, exporters) hands a registry a collector that turns Server.stats() (sessions, and each
service's part) into its metric families, and prometheus-client's encoder writes them (the text
format 0.0.4, or OpenMetrics or gzip when the scraper asks). MetricsEndpoint serves them at /metrics
from a thread of its own with the standard library's http.server rather than prometheus-client's
start_http_server, which answers every path, keeps no read timeout and leaves its handler threads
behind as daemons: here any other path is a 404, a client that connects and says nothing is dropped
after 5 s, and stop() waits for a scrape in progress, so no thread outlives the Server. The same
counters are there in-process: Server.stats().
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MISSING = "the metrics endpoint needs prometheus-client: pip install 'shmbroker[metrics]' (or prometheus-client)"


def require() -> None:
    """Raise ImportError, saying what to install, unless prometheus-client is there."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None


class _Family:
    """One metric family as a service's metrics() fills it: fam(name, kind, help).add(value, **labels)."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"a family is a counter or a gauge, not {kind!r}")
        self.name, self.kind, self.help = name, kind, help_text
        self.labels: tuple[str, ...] | None = None  # fixed by the first sample
        self.samples: list[tuple[list[str], float]] = []

    def add(self, value: Any, **labels: Any) -> None:
        if self.labels is None:
            self.labels = tuple(labels)
        elif tuple(labels) != self.labels:
            raise ValueError(f"{self.name}: every sample has the labels {self.labels}, not {tuple(labels)}")
        self.samples.append(([str(v) for v in labels.values()], float(value or 0)))

    def metric(self) -> Metric:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        m = kind(self.name, self.help, labels=self.labels or ())  # a counter's name loses its _total here...
        for values, value in self.samples:
            m.add_metric(values, value)  # ...and its samples are name_total, as Prometheus wants
        return m


Family = Callable[[str, str, str], _Family]  # fam(name, kind, help): a metric family, made once
Exporters = Iterable[tuple[str, Callable[[Any, Family], None]]]


def families(stats: dict[str, Any], exporters: Exporters = ()) -> list[_Family]:
    """The families of Server.stats(): the sessions', then each (stats key, export) of `exporters`
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
    return list(fams.values())


class _Collector:
    """prometheus-client's custom collector over a stats() callable: read afresh at every scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]], exporters: Exporters) -> None:
        self.stats, self.exporters = stats, tuple(exporters)

    def collect(self) -> Iterator[Metric]:
        for f in families(self.stats(), self.exporters):
            yield f.metric()


def _registry(stats: Callable[[], dict[str, Any]], exporters: Exporters) -> Any:
    require()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, exporters))  # a Collector is anything with collect()
    return registry


def render(stats: dict[str, Any], exporters: Exporters = ()) -> str:
    """The text format (0.0.4) of Server.stats() and the services' parts (see families())."""
    registry = _registry(lambda: stats, exporters)
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


class MetricsEndpoint:
    """GET /metrics on host:port (port 0: one the kernel picks; see .address), in a thread."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str = "127.0.0.1", port: int = 0,
                 exporters: Exporters = ()) -> None:
        registry = _registry(stats, exporters)
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))  # 0.0.4 unless asked
                try:
                    body = encode(registry)
                except Exception as e:  # the server is stopping, say: the scraper sees a 500
                    self.send_error(500, f"no statistics: {e}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if gzip_accepted(self.headers.get("Accept-Encoding", "")):
                    import gzip

                    body = gzip.compress(body)
                    self.send_header("Content-Encoding", "gzip")
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
