"""The long-running daemon (`ctbpf run`): its run loop, the sweeper and
expiry index, metrics, the events relay, resize, reload on SIGHUP, and
restart (the lock, adoption of a running datapath, rebuild, migrations).

Imports the datapath, the policy and the tunables; never the CLI or the lab.
"""
