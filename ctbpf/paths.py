"""Where ctbpf's own files live."""

import os
from pathlib import Path

# The C sources ship beside the package (editable install, or an install
# prefix holding the whole tree); CTBPF_BPF_DIR overrides for odd layouts.
BPF_DIR = Path(os.environ.get("CTBPF_BPF_DIR", Path(__file__).resolve().parent.parent / "bpf"))
