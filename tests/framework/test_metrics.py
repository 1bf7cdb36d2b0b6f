"""The Prometheus endpoint (broker/framework/metrics.py): real HTTP, real traffic, the counters it shows."""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request

import pytest

import broker
from broker import connect
from broker.framework.metrics import render


def _scrape(srv: broker.Server) -> dict[str, float]:
    host, port = srv.metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) broker_\w+ ", line), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_the_endpoint_shows_sessions_topics_and_services(tmp_path):
    srv = broker.Server(str(tmp_path / "m.sock"), metrics=0)
    with srv:
        with connect(str(tmp_path / "m.sock")) as s, connect(str(tmp_path / "m.sock"), socket_only=True) as t:
            pub = s.publisher("m\"etrics")  # a name the format must escape
            sub = t.subscriber("m\"etrics", policy="drop", capacity=2)
            for i in range(10):
                pub.publish(b"%d" % i)
            sub.receive(5)
            offer = s.offer("svc", lambda call: 7)
            link = t.link("svc")
            fut = t.send(-28, 1, b"", None, handle=link.handle)  # a LINK_CALL, answered below
            assert offer.serve_one(5) and fut.result(5) == 7
            m = _scrape(srv)
            assert m['broker_sessions{transport="shared memory"}'] == 1
            assert m['broker_sessions{transport="socket"}'] >= 1
            topic = 'topic="m\\"etrics"'
            assert m[f"broker_topic_subscribers{{{topic}}}"] == 1
            lost = [v for k, v in m.items() if k.startswith("broker_subscriber_lost_total{") and topic in k]
            assert lost and lost[0] >= 7  # 10 published, 2 kept at most, 1 read
            assert m['broker_service_served_total{service="svc"}'] == 1
            assert m['broker_service_pairs{service="svc"}'] == 0
            assert any(k.startswith("broker_session_requests_total{") and v > 0 for k, v in m.items())
            paired = s.link("svc")  # the provider's own session: a private pair, once it has attached it
            offer.serve_one(0.5)
            m = _scrape(srv)
            assert m['broker_service_pairs{service="svc"}'] == 1
            assert m['broker_service_pairs_made_total{service="svc"}'] == 1
            for x in (sub, pub, paired, link, offer):
                x.close()
        host, port = srv.metrics.address
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{host}:{port}/other", timeout=10)
        assert e.value.code == 404
    assert srv.metrics is None  # stopped with the server (the leak check sees its thread gone)
    assert not [t for t in threading.enumerate() if t.name.startswith("broker-metrics")]


def test_render_is_valid_for_empty_stats():
    text = render({"sessions": [], "topics": [], "services": []})
    assert 'broker_sessions{transport="socket"} 0' in text and text.endswith("\n")


def test_a_bad_metrics_port_is_refused(tmp_path):
    with pytest.raises(ValueError, match="a TCP port"):
        broker.Server(str(tmp_path / "x.sock"), metrics=70000)


def test_an_asyncio_server_serves_its_metrics_too(tmp_path):
    import asyncio

    async def main() -> str:
        srv = broker.Server(str(tmp_path / "a.sock"), metrics=0)
        task = asyncio.ensure_future(srv.serve_async())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if srv.metrics is not None:
                break
        host, port = srv.metrics.address
        loop = asyncio.get_running_loop()

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
                return r.read().decode()

        text = await loop.run_in_executor(None, scrape)
        srv.stop()
        await task
        return text

    assert "broker_sessions" in asyncio.run(main())
