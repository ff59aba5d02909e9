"""benchmarks/latency.py refuses bad arguments with a line naming them, before any timing."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


@pytest.mark.parametrize("argv, says", [
    (["--model", "{tmp}"], "not a model folder"),  # was found after the whole encoder table
    (["--model", "{tmp}/no_model", "--only-model"], "no_model: not a model folder"),  # traceback
    (["--only-model"], "--only-model needs --model"),  # was ignored: the encoder table ran
    (["--data", "{tmp}"], "--data needs --model"),
])
def test_bad_arguments_are_one_clear_line(tmp_path, argv, says):
    done = subprocess.run([sys.executable, str(SCRIPT), *(a.format(tmp=tmp_path) for a in argv)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_with_no_onnx_form_is_one_clear_line(tmp_path, make_svm):
    """The model table times ONNX exports: a classic model was a traceback from the exporter."""
    model = make_svm(tmp_path / "svm", ("1", "2"), range(2))
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), "--only-model"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not 'classic-svm'" in done.stderr
    assert "Traceback" not in done.stderr
