"""ctbpf benchmarks: `make bench` or `python -m bench [NAME ...]`.

Each benchmark is a module of this package listed in BENCHMARKS, with:
    HELP                 one line for --help
    add_arguments(p)     its options (argparse), prefixed by its name
    run(args) -> dict    the measurement; the result is written to
                         bench/results/<date>-<name>.json
    summary(result)      a short text table for the terminal
"""

BENCHMARKS = ("sweep",)
