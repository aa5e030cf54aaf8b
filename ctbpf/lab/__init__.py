"""The demo's lab: network namespaces and veths (netns), the traffic that
runs in them (traffic), the demo itself (demo) and its `ctbpf demo` command
(command). Only the program's entry point (ctbpf.main) imports it; the
datapath, agent, policy and CLI never do.
"""
