"""The zero-shot-vs-finetune recipe's results names (no model run)."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "recipes" / "zero_shot_vs_finetune" / "run.py"
spec = importlib.util.spec_from_file_location("zero_shot_vs_finetune_run", RUN)
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)


def test_a_compare_with_another_encoder_gets_its_own_results():
    def stem(**changes) -> str:
        values = {"window": "2s", "quick": False, "encoder": "whisper-tiny.en",
                  "test_takes": None, "budgets": None, **changes}
        return run.compare_stem(argparse.Namespace(**values))

    assert stem() == "compare_2s"  # the shipped results keep their name
    assert len({stem(), stem(encoder="whisper-base"), stem(quick=True), stem(test_takes=5),
                stem(budgets="1,3")}) == 5


@pytest.mark.parametrize("argv, says", [
    (["measure", "--takes", "0"], "'0' is out of range"),
    (["measure", "--takes", "51"], "'51' is out of range"),  # FSDD has takes 0-49
    (["compare", "--test-takes", "-1"], "'-1' is out of range"),
    # the quick bench holds takes 0-9: 10 scored while the results said 20
    (["compare", "--quick", "--test-takes", "20"], "--quick holds takes 0-9 only"),
    (["compare", "--budgets", "5"], "no budget 5"),  # ran no budget, wrote empty results
    (["compare", "--quick", "--budgets", "10"], "no budget 10"),  # quick: all = 10
    (["compare", "--budgets", "1,x"], "no budget x"),  # was a traceback
])
def test_bad_options_are_refused_before_any_model_runs(monkeypatch, capsys, argv, says):
    monkeypatch.setattr(sys, "argv", ["run.py", *argv])
    monkeypatch.setattr(run, "compare", lambda *a: pytest.fail("compare ran"))
    monkeypatch.setattr(run, "measure", lambda *a: pytest.fail("measure ran"))
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_help_keeps_the_docstrings_commands_one_a_line(monkeypatch, capsys):
    """--help ran the example commands together into one paragraph."""
    monkeypatch.setattr(sys, "argv", ["run.py", "--help"])
    with pytest.raises(SystemExit):
        run.main()
    lines = capsys.readouterr().out.splitlines()
    assert "    python recipes/zero_shot_vs_finetune/run.py compare --quick    # < 5 min" in lines
