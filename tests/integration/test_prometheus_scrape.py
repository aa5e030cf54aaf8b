"""A real Prometheus server scrapes ctbpf in the lab while traffic runs, and
PromQL through its HTTP API gives back what the test sent.

Prometheus runs in the router's network namespace, beside the tracker, and
scrapes the tracker's default metrics address there (127.0.0.1:9476 of that
namespace), so nothing listens outside the lab.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import cannot

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

PROM_PORT = 9090
CONNECTIONS = 12
PING_COUNT = 5

PROM_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ctbpf
    static_configs:
      - targets: ["127.0.0.1:9476"]
"""


@pytest.fixture
def prometheus(lab, tmp_path):
    if shutil.which("prometheus") is None:
        cannot("prometheus is not installed (Debian package `prometheus`; make setup installs it)")
    (tmp_path / "prometheus.yml").write_text(PROM_CONFIG)
    proc = lab.popen("router", ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
                                "--log.level=warn"])
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def query(lab, promql: str) -> list:
    """Instant query through Prometheus's HTTP API, from inside the router."""
    script = ("import json,sys,urllib.parse,urllib.request;"
              f"u='http://127.0.0.1:{PROM_PORT}/api/v1/query?'+urllib.parse.urlencode({{'query':sys.argv[1]}});"
              "print(urllib.request.urlopen(u,timeout=5).read().decode())")
    out = lab.exec("router", ["python3", "-c", script, promql], timeout=10)
    if out.returncode != 0:
        return []
    body = json.loads(out.stdout)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_value(lab, promql: str, predicate, timeout: float = 20.0) -> float:
    """Poll (bounded) until the query's single value satisfies predicate."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = query(lab, promql)
        if result:
            last = float(result[0]["value"][1])
            if predicate(last):
                return last
        time.sleep(0.5)
    raise AssertionError(f"{promql}: last value {last} after {timeout}s")


def test_prometheus_sees_what_was_sent(lab, tracker, prometheus):
    lab.warm_up()
    up = wait_value(lab, 'up{job="ctbpf"}', lambda v: v == 1)
    assert up == 1
    before_new = wait_value(lab, 'ctbpf_packets_total{state="new"}', lambda v: v >= 0)

    port = 7300
    server = lab.traffic_popen("server", "tcp-server", "--port", port, "--count", CONNECTIONS,
                               "--hold", 20)
    assert lab.wait_listening("server", port)
    clients = [lab.traffic_popen("client", "tcp-client", "--host", lab.server_ip, "--port", port,
                                 "--hold", 20) for _ in range(CONNECTIONS)]
    assert lab.exec("client", ["ping", "-c", str(PING_COUNT), "-i", "0.2", "-W", "2",
                               lab.server_ip]).returncode == 0

    # every connection is open and ASSURED: that many tcp ESTABLISHED flows
    established = wait_value(
        lab, f'sum(ctbpf_flow_entries{{proto="tcp",state="ESTABLISHED",table="assured"}})',
        lambda v: v == CONNECTIONS)
    assert established == CONNECTIONS
    # one NEW packet per connection's SYN, one for the ping flow: at least that many
    new = wait_value(lab, f'ctbpf_packets_total{{state="new"}} - {before_new}',
                     lambda v: v >= CONNECTIONS + 1)
    assert new >= CONNECTIONS + 1
    # the echo requests and replies were counted as packets of tracked flows
    est = wait_value(lab, 'ctbpf_packets_total{state="established"}',
                     lambda v: v >= CONNECTIONS * 2 + PING_COUNT * 2 - 1)
    assert est >= CONNECTIONS * 2 + PING_COUNT * 2 - 1
    assert wait_value(lab, 'ctbpf_stat_insert_total', lambda v: v >= CONNECTIONS + 1) >= CONNECTIONS + 1
    assert wait_value(lab, 'ctbpf_entries_limit', lambda v: v > 0) == 65536
    assert wait_value(lab, 'sum(ctbpf_packets_total{state="invalid"})', lambda v: v == 0) == 0
    assert wait_value(lab, 'ctbpf_sweeper_runs_total', lambda v: v >= 1) >= 1
    # what a person would ask, for the record (pytest -s shows it)
    for promql in ('sum by (proto, state) (ctbpf_flow_entries)', 'ctbpf_packets_total'):
        print(promql, "->", json.dumps(query(lab, promql)))

    for c in clients:
        c.kill()
    server.kill()
