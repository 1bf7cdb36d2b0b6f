"""The server's counters in the Prometheus text format, on an optional HTTP endpoint.

render(stats) turns Server.stats() (sessions, topics, linked services) into
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


def render(stats: dict[str, Any]) -> str:
    """The text format of Server.stats()."""
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
    for t in stats.get("topics", []):
        name = t.get("topic")
        fam("broker_topic_published_total", "counter",
            "Messages published (a ring publisher's: those the server relayed).").add(t.get("published"), topic=name)
        fam("broker_topic_dropped_total", "counter", "Messages the drop policy dropped.").add(t.get("dropped"),
                                                                                               topic=name)
        fam("broker_topic_timed_out_total", "counter", "Publishes that waited for room in vain.").add(
            t.get("timed_out"), topic=name)
        fam("broker_topic_disconnected_total", "counter", "Subscribers the disconnect policy closed.").add(
            t.get("disconnected"), topic=name)
        fam("broker_topic_publishers", "gauge", "Publishers on the topic.").add(len(t.get("publishers", [])),
                                                                                 topic=name)
        fam("broker_topic_subscribers", "gauge", "Subscribers on the topic.").add(len(t.get("subscribers", [])),
                                                                                   topic=name)
        for q in t.get("subscribers", []):
            lab = {"topic": name, "subscriber": q.get("id"), "policy": q.get("policy"),
                   "direct": str(bool(q.get("direct"))).lower()}
            fam("broker_subscriber_lost_total", "counter", "Messages lost to a subscriber (drop policy).").add(
                q.get("lost"), **lab)
            fam("broker_subscriber_delivered_total", "counter", "Messages relayed to a subscriber.").add(
                q.get("delivered"), **lab)
            fam("broker_subscriber_queued", "gauge", "Messages waiting in a subscriber's queue.").add(
                q.get("queued"), **lab)
    for v in stats.get("services", []):
        lab = {"service": v.get("service")}
        fam("broker_service_served_total", "counter", "Calls a linked service's provider answered.").add(
            v.get("served"), **lab)
        fam("broker_service_running", "gauge", "Calls the provider is running.").add(v.get("running"), **lab)
        fam("broker_service_queued", "gauge", "Calls waiting for the provider.").add(v.get("queued"), **lab)
        fam("broker_service_callers", "gauge", "Sessions with a link to the service.").add(
            len(v.get("callers", [])), **lab)
        fam("broker_service_pairs", "gauge", "Private pairs of rings between a caller and the provider now "
            "(their calls bypass the broker).").add(v.get("direct", 0), **lab)
        fam("broker_service_pairs_made_total", "counter", "Private pairs of rings made for the service.").add(
            v.get("pairs", 0), **lab)
    return "\n".join(line for f in fams.values() for line in f.lines()) + "\n"


class MetricsEndpoint:
    """GET /metrics on host:port (port 0: one the kernel picks; see .address), in a thread."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str = "127.0.0.1", port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                try:
                    body = render(stats()).encode()
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
