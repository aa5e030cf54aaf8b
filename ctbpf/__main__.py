"""`python -m ctbpf`: the same program as the `ctbpf` command."""

import sys

from ctbpf.main import main

sys.exit(main())
