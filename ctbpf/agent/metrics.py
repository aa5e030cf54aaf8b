"""Prometheus metrics, read from the pinned maps at scrape time.

A custom collector: nothing polls the maps in the background; each scrape
reads the per-CPU counters (one lookup) and the tables (batch reads counted
from raw buffers, see occupancy.py). Names mirror node_exporter's
`node_nf_conntrack_*` where a counterpart exists (docs/metrics.md):

    node_nf_conntrack_entries            -> sum(ctbpf_entries)
    node_nf_conntrack_entries_limit      -> ctbpf_entries_limit
    node_nf_conntrack_stat_found         -> ctbpf_stat_found_total
    node_nf_conntrack_stat_invalid       -> ctbpf_stat_invalid_total
    node_nf_conntrack_stat_ignore        -> ctbpf_stat_ignore_total
    node_nf_conntrack_stat_insert        -> ctbpf_stat_insert_total
    node_nf_conntrack_stat_insert_failed -> ctbpf_stat_insert_failed_total
    node_nf_conntrack_stat_early_drop    -> ctbpf_stat_early_drop_total
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)

from ctbpf import __version__, abi
from ctbpf.datapath import occupancy, stats
from ctbpf.datapath.table import PROTO_NAMES
from ctbpf.errors import UsageError

log = logging.getLogger(__name__)

_STAT = {name: value for value, name in abi.STAT_NAMES.items()}


def _proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


class TrackerCollector:
    """Metric families of one tracker, from its pinned maps.

    `limit` is conntrack_max (entries per table); `extra` yields more
    families at scrape time (the sweeper's own, for instance)."""

    def __init__(self, pin_dir: Path, limit: Callable[[], int],
                 extra: Callable[[], Iterable] | None = None, features=None) -> None:
        self.pin_dir = pin_dir
        self.limit = limit
        self.extra = extra
        self.features = features   # features.KernelFeatures of the agent, or None

    def describe(self):
        return []  # collected lazily: no map read at registration

    def _occupancy(self):
        """Counted in the kernel when the probe loaded the iterator, else
        from batch reads. An iterator that fails at a scrape is dropped for
        good, with one line: no retry per scrape."""
        counter = self.features.iter_counter if self.features is not None else None
        if counter is not None:
            try:
                return counter.count(self.pin_dir)
            except OSError as e:
                log.warning("occupancy iterator failed (%s): scrapes read the tables from now on",
                            e)
                self.features.close()
        return occupancy.occupancy(self.pin_dir)

    def collect(self):
        counters = stats.read_counters(self.pin_dir)
        occ, self._present = self._occupancy()
        yield from self._entries(occ)
        yield from self._packets(counters)
        yield from self._stats(counters, occ)
        yield from self._policy(counters)
        yield from self._fast_path()
        info = InfoMetricFamily("ctbpf_build", "ctbpf build information")
        how = self.features.occupancy if self.features is not None else "batch"
        info.add_metric([], {"version": __version__, "layout_version": str(abi.LAYOUT_VERSION),
                             "occupancy": how})
        yield info
        if self.features is not None:
            fam = GaugeMetricFamily("ctbpf_kernel_feature", "1 where this kernel accepted an "
                                    "optional feature at start, 0 where ctbpf uses its fallback",
                                    labels=["feature"])
            for f in self.features.all():
                fam.add_metric([f.name], int(f.ok))
            yield fam
        if self.extra:
            yield from self.extra()

    def _entries(self, occ):
        entries = GaugeMetricFamily("ctbpf_entries", "Live flow entries per table "
                                    "(sum: node_nf_conntrack_entries)", labels=["table"])
        flows = GaugeMetricFamily("ctbpf_flow_entries", "Live flow entries per table, "
                                  "protocol and TCP state", labels=["table", "proto", "state"])
        for table_name, counter in sorted(occ.items()):
            entries.add_metric([table_name], sum(counter.values()))
            for (proto, state), n in sorted(counter.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
                state_name = abi.TCP_STATE_NAMES.get(state, "") if state is not None else ""
                flows.add_metric([table_name, _proto_name(proto), state_name], n)
        yield entries
        yield flows
        yield GaugeMetricFamily("ctbpf_entries_limit", "conntrack_max: flows both tables hold in "
                                "all (node_nf_conntrack_entries_limit)", value=self.limit())

    def _packets(self, c):
        packets = CounterMetricFamily("ctbpf_packets", "Packets by user-land state",
                                      labels=["state"])
        for value, name in abi.PKT_STATE_NAMES.items():
            packets.add_metric([name], c[value])
        yield packets
        invalid = CounterMetricFamily("ctbpf_invalid_packets", "INVALID packets by reason",
                                      labels=["reason"])
        for value, name in abi.INVALID_REASON_NAMES.items():
            invalid.add_metric([name], c[stats.BASE + value])
        yield invalid

    def _policy(self, c):
        from ctbpf.policy import mapio, model  # noqa: PLC0415

        dropped = CounterMetricFamily("ctbpf_dropped_packets", "Packets dropped in enforce mode, "
                                      "by cause", labels=["cause"])
        dropped.add_metric(["policy"], c[_STAT["drop"]] - c[_STAT["drop_table_full"]])
        dropped.add_metric(["table_full"], c[_STAT["drop_table_full"]])
        yield dropped
        if not (self.pin_dir / model.MAP).exists():
            return
        ps, _ = mapio.read(self.pin_dir)
        yield GaugeMetricFamily("ctbpf_enforce", "1 in enforce mode (verdicts applied), 0 in "
                                "observe mode (verdicts counted only)",
                                value=int(ps.mode == "enforce"))
        fam = CounterMetricFamily("ctbpf_policy_packets", "Packets judged by an interface's "
                                  "policy, by user-land state and verdict (would_drop: observe "
                                  "mode)", labels=["interface", "direction", "state", "verdict"])
        for name, state, verdict, n in mapio.verdict_counts(self.pin_dir):
            direction, _, iface = name.partition(".")
            fam.add_metric([iface, direction, state, verdict], n)
        yield fam

    def _fast_path(self):
        from ctbpf.datapath import configmap, fastpath  # noqa: PLC0415

        if not (self.pin_dir / fastpath.MAP).exists():
            return
        yield GaugeMetricFamily("ctbpf_fast_path", "1 when ESTABLISHED, ASSURED flows are "
                                "forwarded at XDP (fast_path)",
                                value=int(configmap.fast_path_on(self.pin_dir)))
        per = fastpath.read(self.pin_dir)
        fwd = CounterMetricFamily("ctbpf_fast_path_packets", "Packets forwarded at XDP, by "
                                  "interface and direction (in: arrived there, out: sent "
                                  "there)", labels=["interface", "direction"])
        fwd_bytes = CounterMetricFamily("ctbpf_fast_path_bytes", "IP bytes forwarded at XDP, "
                                        "by interface and direction",
                                        labels=["interface", "direction"])
        passed = CounterMetricFamily("ctbpf_fast_path_passed_packets", "Packets of tracked "
                                     "flows the fast path left to the kernel, by arriving "
                                     "interface and cause", labels=["interface", "cause"])
        for iface, c in per.items():
            fwd.add_metric([iface, "in"], c["rx_packets"])
            fwd.add_metric([iface, "out"], c["tx_packets"])
            fwd_bytes.add_metric([iface, "in"], c["rx_bytes"])
            fwd_bytes.add_metric([iface, "out"], c["tx_bytes"])
            for cause in fastpath.PASS_CAUSES.values():
                passed.add_metric([iface, cause], c["pass_" + cause])
        yield fwd
        yield fwd_bytes
        yield passed

    def _stats(self, c, occ):
        def counter(name, doc, value):
            return CounterMetricFamily(f"ctbpf_{name}", doc, value=value)

        yield counter("stat_found", "Lookups that found a live entry", c[_STAT["found"]])
        yield counter("stat_invalid", "INVALID packets", c[_STAT["pkt_invalid"]])
        yield counter("stat_ignore", "TCP packets the state table ignores", c[_STAT["ignored"]])
        yield counter("stat_insert", "Entries created", c[_STAT["insert"]])
        yield counter("stat_insert_failed", "Entries that could not be created or promoted",
                      c[_STAT["insert_failed"]])
        yield counter("stat_early_drop", "Unassured entries evicted to make room "
                      "(derived from the books, see ctbpf/datapath/stats.py)",
                      stats.early_drop(c, self._present))
        yield counter("expired", "Entries removed after their timeout (met on lookup or swept)",
                      c[_STAT["expired_seen"]] + c[_STAT["swept"]])
        yield counter("datapath_deletes", "Entries removed by the datapath "
                      "(RST as the only reply, reopened connections)", c[_STAT["delete"]])
        yield counter("promotions", "Entries moved to the ASSURED table", c[_STAT["promote"]])
        yield counter("demotions", "ASSURED entries moved back as they close", c[_STAT["demote"]])
        yield counter("events_lost", "Events the ring buffer had no room for",
                      c[_STAT["event_lost"]])
        yield counter("expiry_index_lost", "Expiry registrations the ct_timers ring had no "
                      "room for (each makes the sweeper rebuild its index)",
                      c[_STAT["timer_lost"]])
        yield counter("untracked_no_stage", "Frames of flows passed untracked because a "
                      "tracker stage's program-array slot was empty (should stay 0)",
                      c[_STAT["no_tracker"]])
        yield counter("icmp_errors", "ICMP errors examined", c[_STAT["icmp_error"]])
        yield counter("non_ip_frames", "Frames that are not IPv4/IPv6", c[_STAT["non_ip"]])


def sweeper_families(sweep_stats) -> Iterable:
    """The sweeper's own metrics, from its SweepStats."""
    yield CounterMetricFamily("ctbpf_sweeper_runs", "Sweeps of the tables (passes)",
                              value=sweep_stats.passes)
    yield CounterMetricFamily("ctbpf_sweeper_deleted", "Expired entries the sweeper deleted",
                              value=sweep_stats.deleted_total)
    yield CounterMetricFamily("ctbpf_sweeper_scanned", "Entries the sweeper read",
                              value=sweep_stats.scanned_total)
    yield CounterMetricFamily("ctbpf_sweeper_errors", "Sweeps that failed",
                              value=sweep_stats.errors)
    yield GaugeMetricFamily("ctbpf_sweeper_index_keys", "Keys in the sweeper's expiry index "
                            "(a flow may be filed more than once)", value=sweep_stats.index_keys)
    walks = CounterMetricFamily("ctbpf_sweeper_passes", "Sweeps by kind: index (due keys "
                                "only), walk (safety walk of the tables), seed (walk that "
                                "rebuilds the index)", labels=["kind"])
    walks.add_metric(["index"], sweep_stats.index_passes)
    walks.add_metric(["walk"], sweep_stats.walks - sweep_stats.seeds)
    walks.add_metric(["seed"], sweep_stats.seeds)
    yield walks
    yield CounterMetricFamily("ctbpf_sweeper_index_missed", "Overdue entries a safety walk "
                              "found: the expiry index had missed them (0 when healthy)",
                              value=sweep_stats.walk_found_total)
    yield GaugeMetricFamily("ctbpf_sweeper_interval_seconds", "Time until the next sweep, "
                            "as adapted to how much the last ones found",
                            value=sweep_stats.interval)
    hist = HistogramMetricFamily("ctbpf_sweeper_duration_seconds", "Busy time of a sweep")
    buckets = [(("+Inf" if b == float("inf") else str(b)), n)
               for b, n in sweep_stats.cumulative_buckets()]
    hist.add_metric([], buckets, sum_value=sweep_stats.duration_sum)
    yield hist


def parse_addr(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) for --metrics-addr."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"metrics address {text!r}: use HOST:PORT, e.g. 127.0.0.1:9476")
    return host.strip("[]"), int(port)


class MetricsService:
    """Serves /metrics for the daemon. The HTTP thread reads the maps only
    when scraped; nothing polls in the background."""

    name = "metrics"

    def __init__(self, addr: str) -> None:
        self.addr = parse_addr(addr)
        self._server = None

    def start(self, daemon) -> None:
        registry = CollectorRegistry(auto_describe=False)
        sweeper = next((s for s in daemon.services if s.name == "sweeper"), None)
        extra = (lambda: sweeper_families(sweeper.stats)) if sweeper is not None else None
        registry.register(TrackerCollector(daemon.pin_dir, lambda: daemon.datapath.max_entries,
                                           extra, daemon.features))
        host, port = self.addr
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise UsageError(f"metrics address {host}:{port}: {e.strerror}") from None
        daemon.status["metrics"] = f"http://{host}:{port}/metrics"

    def due(self) -> float:
        return float("inf")

    def run_once(self, now: float) -> None:  # the HTTP thread does the work
        pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
