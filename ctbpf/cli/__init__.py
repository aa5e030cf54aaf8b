"""The `ctbpf` commands: argparse (main), one module per command
(commands/), flow filters, `ctbpf config`'s view and `ctbpf top`.

Calls into the agent and the datapath; nothing below imports it.
"""
