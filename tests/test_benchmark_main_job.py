"""benchmarks/main_job.py refuses an --out it may not replace with a line naming it, before
any training is timed."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "main_job.py"


@pytest.mark.parametrize("out, says", [
    ("{tmp}", "holds other files"),  # was a traceback from inside train_job
    ("{tmp}/notes.txt", "notes.txt: exists and is not a folder"),
])
def test_an_out_it_may_not_replace_is_one_clear_line(tmp_path, out, says):
    (tmp_path / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", out.format(tmp=tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
