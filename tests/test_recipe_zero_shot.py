"""The zero-shot-vs-finetune recipe's results names (no model run)."""

import argparse
import importlib.util
import sys
from pathlib import Path

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
