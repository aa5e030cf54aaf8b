"""What talks to the kernel: BPF syscalls, pins, compiling, loading and
attaching the programs, the config map, table reads and writes, rings,
occupancy, and the probe of what this kernel allows.

Imports only ctbpf.abi, ctbpf.paths, ctbpf.tunables and ctbpf.errors from
outside this package (tests/layout checks it).
"""
