"""Recipes name their results by the options that change a figure: a run with other options
never writes over another's results (no model run)."""

import argparse

import pytest

from speechxfer.openset import DEFAULT_MAX_FALSE_ACCEPT


def names(function, base: dict, variants: list[dict], *extra) -> list[str]:
    return [function(argparse.Namespace(**{**base, **v}), *extra) for v in [{}, *variants]]


def test_speech_commands_and_synthetic_results_carry_seed_and_bar(load_recipe):
    base = {"quick": False, "seed": 0, "max_false_accept": DEFAULT_MAX_FALSE_ACCEPT}
    variants = [{"quick": True}, {"seed": 1}, {"max_false_accept": 0.01}]
    sc = names(load_recipe("speech_commands").results_suffix, base, variants)
    assert sc[:2] == ["", "_quick"] and len(set(sc)) == 4
    synthetic = names(load_recipe("synthetic").results_suffix, {**base, "skip_digits": False},
                      [*variants, {"skip_digits": True}])
    assert synthetic[:2] == ["", "_quick"] and len(set(synthetic)) == 5


def test_augmentation_results_carry_tasks_copies_seed_and_bar(load_recipe):
    base = {"quick": False, "seed": 0, "copies": None, "max_false_accept": DEFAULT_MAX_FALSE_ACCEPT,
            "max_minutes": None}
    both = ["digits", "speech_commands"]
    stems = names(load_recipe("augmentation").results_stem, base,
                  [{"quick": True}, {"seed": 1}, {"copies": 4}, {"max_false_accept": 0.01}], both)
    assert stems[:2] == ["results", "results_quick"] and len(set(stems)) == 5
    assert load_recipe("augmentation").results_stem(argparse.Namespace(**base), ["digits"]) == \
        "results_digits"


def test_augmentation_results_carry_a_budget_other_than_the_plans(load_recipe, capsys):
    """A smaller budget cuts conditions: its results replaced the default run's, which had them."""
    augmentation = load_recipe("augmentation")
    others = {"seed": 0, "copies": None, "max_false_accept": DEFAULT_MAX_FALSE_ACCEPT}

    def stem(quick: bool, minutes: float | None) -> str:
        args = argparse.Namespace(quick=quick, max_minutes=minutes, **others)
        return augmentation.results_stem(args, ["digits", "speech_commands"])

    assert stem(False, None) == stem(False, augmentation.FULL.max_minutes) == "results"
    assert stem(True, None) == stem(True, augmentation.QUICK.max_minutes) == "results_quick"
    assert stem(False, 10) == "results_budget10" and stem(True, 2.5) == "results_quick_budget2.5"
    for bad in ("nan", "-1"):  # a name of its own, and no empty results
        with pytest.raises(SystemExit) as stop:
            augmentation.main(["--max-minutes", bad])
        assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err


def test_redrawing_results_that_are_not_there_is_one_clear_line(load_recipe, tmp_path, capsys):
    synthetic = load_recipe("synthetic")
    with pytest.raises(SystemExit) as stop:
        synthetic.main(["--redraw", "--seed", "3", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "results_seed3.json: no results to redraw" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--seed", "-1"], ["--max-false-accept", "nan"]])
def test_synthetic_refuses_bad_values_before_loading_data(load_recipe, tmp_path, monkeypatch, capsys, option):
    synthetic = load_recipe("synthetic")  # --seed -1 was a traceback once Speech Commands had loaded
    monkeypatch.setattr(synthetic, "Bank", lambda *a: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as stop:
        synthetic.main(["--out", str(tmp_path), *option])
    assert stop.value.code == 2 and "is out of range" in capsys.readouterr().err
