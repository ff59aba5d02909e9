"""benchmarks/stream.py refuses bad input with a line naming it, before any stream is built."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stream.py"


@pytest.mark.parametrize("argv, says", [
    (["{tmp}/no_model"], "no_model: not a model folder"),
    (["{tmp}/no_model", "--minutes", "0"], "--minutes must be positive"),
    (["{tmp}/no_model", "--minutes", "nan"], "--minutes must be positive"),  # were tracebacks
    (["{tmp}/no_model", "--minutes", "inf"], "--minutes must be positive"),
    (["{tmp}/no_model", "--seed", "-1"], "--seed must be 0 or more"),
])
def test_bad_input_is_one_clear_line(tmp_path, argv, says):
    done = subprocess.run([sys.executable, str(SCRIPT), *(a.format(tmp=tmp_path) for a in argv)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and says in done.stderr
    assert "Traceback" not in done.stderr
