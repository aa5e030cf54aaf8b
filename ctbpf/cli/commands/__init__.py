"""One module per `ctbpf` subcommand. Each has NAME, HELP,
add_arguments(parser) and run(args) -> exit code; heavy imports stay inside
run() so that `ctbpf --help` and argument errors are instant."""

# The order of `ctbpf --help` (then `demo`, which the lab adds: ctbpf.main).
MODULES = ("run", "list", "get", "delete", "flush", "count", "events", "stats", "top", "set",
           "config", "policy")
