"""ctbpf benchmarks: `make bench` or `python -m bench [NAME ...]`.

Each benchmark is a module of this package listed in ORDER, with:
    HELP                 one line for --help
    add_arguments(p)     its options (argparse), prefixed by its name
    run(args) -> dict    the measurement; the result is written to
                         bench/results/<date>-<name>.json
    summary(result)      a short text table for the terminal
    OPT_IN = True        (optional) run only when named, not by a bare
                         `python -m bench` (dpcompare: it needs another build)
"""

from pathlib import Path

#: Every benchmark, in the order `make bench` runs them. A name whose module
#: is not written yet is left out, so modules can land one at a time.
ORDER = ("datapath", "scale", "memory", "sweep", "controlplane", "forwarding", "flood",
         "fibcache", "dpcompare", "injection")

BENCHMARKS = tuple(n for n in ORDER if (Path(__file__).parent / f"{n}.py").exists())
