"""benchmarks/hf_compare.py refuses bad arguments at once: each model is measured in a child
process, and a child that failed on one (``--steps 0``) left the parent waiting for ever."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_compare.py"


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps must be 1 or more, got 0"),
    (["--batch", "501"], "--batch must be 1..500, got 501"),  # more clips than jackson has
    (["--threads", "0"], "--threads must be 1 or more"),
])
def test_bad_arguments_are_one_clear_line(argv, says):
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], check=False, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr
