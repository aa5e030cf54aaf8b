"""ctbpf demo: ctbpf on a built-in lab of network namespaces."""

NAME = "demo"
HELP = "run ctbpf on a built-in lab of network namespaces"


def add_arguments(p) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--keep", action="store_true",
                      help="leave the lab and its tracker running after the demo, to try the "
                           "commands it prints; remove them with --cleanup")
    what.add_argument("--cleanup", action="store_true",
                      help="stop the trackers of labs --keep left and remove the labs and their "
                           "maps")


def run(args) -> int:
    from ctbpf.lab.demo import main  # noqa: PLC0415

    return main(keep=args.keep, cleanup=args.cleanup)
