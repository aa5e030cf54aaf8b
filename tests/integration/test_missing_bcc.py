"""Without BCC, `ctbpf run` says what to install, in one line, and leaves
nothing behind."""

import os
import secrets
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_run_without_bcc_says_what_to_install():
    if os.geteuid() != 0:
        pytest.skip("needs root to get past the root check")
    pin_dir = Path(f"/sys/fs/bpf/ctbpf-nobcc-{secrets.token_hex(4)}")
    # -S: no site-packages, hence no Debian bcc; the package itself from the tree
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(["/usr/bin/python3", "-S", "-m", "ctbpf", "run", "--iface", "lo",
                             "--pin-dir", str(pin_dir), "--metrics-addr", "none"], capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "BCC is missing" in result.stderr and "python3-bpfcc" in result.stderr
    assert not pin_dir.exists()
