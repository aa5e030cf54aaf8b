"""ctbpf list: the table, like /proc/net/ip_conntrack or conntrack -L.

The table is read and written chunk by chunk (ctbpf.datapath.tablestream,
listtext), so the first lines come out at once and memory stays at one
chunk whatever the table holds; in table order, as conntrack -L prints.
--sort reads the whole table first to order it."""

import sys

from ctbpf.cli.commands.common import add_filters, add_pin_dir, existing_pin_dir

NAME = "list"
HELP = "list tracked flows (like conntrack -L)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("proc", "conntrack", "json"), default="proc",
                   help="proc: /proc/net/ip_conntrack lines (default); conntrack: "
                        "`conntrack -L` lines, counters included; json: one array, an object "
                        "per line")
    p.add_argument("--sort", action="store_true",
                   help="sort by protocol, then original source address and port, "
                        "destination address and port. Without it flows stream in table "
                        "order, unsorted like conntrack -L, in bounded memory; --sort holds "
                        "the whole table before the first line")
    add_filters(p)


def run(args) -> int:
    from ctbpf import __version__  # noqa: PLC0415
    from ctbpf.cli.filters import FlowFilter  # noqa: PLC0415
    from ctbpf.datapath import listtext, tablestream  # noqa: PLC0415

    flt = FlowFilter.from_args(args)
    pin_dir = existing_pin_dir(args)
    counters = tablestream.acct_counters(pin_dir)
    chunks = (tablestream.stream_sorted(pin_dir, counters) if args.sort
              else tablestream.stream(pin_dir, counters))
    shown = write(chunks, listtext.FORMATS[args.output], args.output == "json", flt)
    if args.output == "conntrack":
        print(f"ctbpf v{__version__}: {shown} flow entries have been shown.", file=sys.stderr)
    return 0


def write(chunks, lines, json: bool, flt, out=None) -> int:
    """Each chunk's lines, written as soon as made; returns how many flows."""
    out = out or sys.stdout.buffer
    sys.stdout.flush()
    shown = 0
    if json:
        out.write(b"[")
    for chunk in chunks:
        if not flt.everything():
            chunk = chunk.select(flt.mask(chunk))
        if not len(chunk):
            continue
        text = lines(chunk)
        if json:   # objects end in ",\n": the last one of the array must not
            out.write(b",\n" if shown else b"")
            text = memoryview(text)[:-2]
        out.write(text)
        if not shown:
            out.flush()   # the first lines, while the rest is read
        shown += len(chunk)
    if json:
        out.write(b"]\n")
    out.flush()
    return shown
