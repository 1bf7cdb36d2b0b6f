"""The Prometheus endpoint (src/shmbroker/framework/metrics.py): real HTTP, real traffic, the counters it shows."""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.framework.metrics import render


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


def test_the_text_is_what_prometheus_parses_and_a_scraper_may_ask_for_openmetrics_or_gzip(tmp_path):
    """prometheus-client's own parser reads every family back with its kind and samples; a scraper
    that asks for OpenMetrics or gzip gets it (Prometheus asks for both)."""
    import gzip

    from prometheus_client.parser import text_string_to_metric_families

    srv = broker.Server(str(tmp_path / "p.sock"), metrics=0)
    with srv, connect(str(tmp_path / "p.sock"), socket_only=True) as s:  # its publishes go through the server
        pub = s.publisher("parsed")
        pub.publish(b"x")
        host, port = srv.metrics.address
        url = f"http://{host}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["broker_sessions"].type == "gauge"
        assert fams["broker_session_requests"].type == "counter"  # the family; its samples are ..._total
        assert {x.name for x in fams["broker_session_requests"].samples} == {"broker_session_requests_total"}
        published = fams["broker_topic_published"].samples
        assert [(x.labels["topic"], x.value) for x in published] == [("parsed", 1.0)]
        ask = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                                   "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(ask, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.headers["Content-Encoding"] == "gzip"
            om = gzip.decompress(r.read()).decode()
        assert om.endswith("# EOF\n") and "broker_topic_published_total{" in om
        pub.close()


def test_without_prometheus_client_the_endpoint_says_what_to_install(tmp_path):
    """The metrics extra missing: Server(metrics=...) and `shmbroker serve --metrics` say what to install
    (exit 2, no traceback); a server without metrics does not need it."""
    import subprocess
    import sys

    hide = "import sys; sys.modules['prometheus_client'] = None; "
    code = hide + ("import shmbroker as broker\n"
                   "try:\n    broker.Server(sys.argv[1], metrics=0)\n"
                   "except ImportError as e:\n    print(e)\n"
                   "with broker.Server(sys.argv[1]) as srv:\n    print('served', srv.metrics)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.sock")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["the metrics endpoint needs prometheus-client: pip install 'shmbroker[metrics]' "
                                     "(or prometheus-client)", "served None"]
    cli = hide + "from shmbroker.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", cli, "serve", "--address", str(tmp_path / "b.sock"), "--metrics", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "pip install 'shmbroker[metrics]'" in p.stderr and "Traceback" not in p.stderr
