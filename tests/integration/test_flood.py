"""Early drop under a SYN flood: ASSURED connections survive a full table.

A few hundred real TCP connections, held open through the lab's router,
are ASSURED and live in ct_assured, a plain hash that nothing evicts. A
spoofed SYN flood (hping3 --rand-source, bounded in count and time) of many
times the table size then fills ct_new, the LRU table of unassured flows,
which can only evict other unassured flows. Every connection must still be
listed, ESTABLISHED and ASSURED, and still pass data; the counters must
show the evictions (early_drop). The figures are printed and recorded as
test properties: connections kept / total, evictions, flood packets sent.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from test_restart import Conns, all_established, listed, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

TABLE = 1024          # --max: entries per table
CONNS = 300
FLOOD = 50_000        # > 10 x TABLE
FLOOD_PORT = 80
FLOOD_SECONDS = 60    # hard bound on the flood (about 3 s here)


def test_syn_flood_evicts_only_unassured_flows(lab, pin_dir, start_tracker, record_property):
    tr = start_tracker(pin_dir, extra=["--max", str(TABLE)])
    conns = Conns(lab, CONNS, interval=1.0, timeout=300)
    before = wait_for(f"{CONNS} connections ESTABLISHED and ASSURED",
                      lambda: all_established(conns, tr), timeout=60)
    assert len(before) == CONNS

    # The server never answers the flood (no SYN/ACK, no RST): its entries
    # stay SYN_SENT [UNREPLIED] until evicted, the worst case for the table.
    lab.nft("server", "table inet flood {\n chain input {\n"
                      "  type filter hook input priority -10; policy accept;\n"
                      f"  tcp dport {FLOOD_PORT} drop\n }}\n}}\n")
    stats0 = tr.stats()
    t0 = time.monotonic()
    cp = lab.exec("client", ["timeout", "-s", "INT", FLOOD_SECONDS, "hping3", "-q", "-S",
                             "--rand-source", "-p", FLOOD_PORT, "--faster", "-c", FLOOD,
                             lab.server_ip], timeout=FLOOD_SECONDS + 30)
    flood_s = time.monotonic() - t0
    m = re.search(r"(\d+) packets transmitted", cp.stdout + cp.stderr)
    assert m, (cp.returncode, cp.stdout, cp.stderr)
    sent = int(m.group(1))
    assert sent >= 10 * TABLE, f"the flood must be at least 10 x the table: {sent}"

    # After the flood: every connection still there, confirmed, passing data.
    time.sleep(0.5)
    after = conns.flows(listed(tr))
    kept = [p for p, f in after.items()
            if f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"] and f["table"] == "assured"]
    check = conns.check()
    stats = tr.stats()
    inserted = stats["events"]["insert"] - stats0["events"]["insert"]
    evicted = stats["events"]["early_drop"] - stats0["events"]["early_drop"]
    figures = {"connections_kept": len(kept), "connections_total": CONNS,
               "echoed_after_flood": check["ok"], "flood_packets_sent": sent,
               "flood_seconds": round(flood_s, 2), "flood_inserts": inserted,
               "early_drop": evicted, "ct_new_entries": stats["entries"]["new"],
               "insert_failed": stats["events"]["insert_failed"] - stats0["events"]["insert_failed"],
               "table_size": TABLE}
    for k, v in figures.items():
        record_property(k, v)
    print("\nSYN flood figures: " + ", ".join(f"{k}={v}" for k, v in figures.items()))

    assert len(kept) == CONNS, f"connections lost to the flood: {set(conns.ports) - set(kept)}"
    assert check["ok"] == CONNS and not check["failed"], check
    assert stats["entries"]["assured"] >= CONNS
    # The flood went through ct_new, which holds at most TABLE of it: the
    # rest was evicted, and early_drop says so.
    assert inserted >= 10 * TABLE * 0.9, figures
    assert evicted > 0
    assert inserted - TABLE <= evicted <= inserted, figures
    assert stats["entries"]["new"] <= TABLE
    assert figures["insert_failed"] == 0, figures

    # The connections' own packets were never judged INVALID meanwhile.
    assert stats["packets"]["invalid"] == stats0["packets"]["invalid"]
    tr.stop(signal.SIGINT)
    conns.command("quit")
