"""``log.run_script``: a recipe or benchmark stopped with Ctrl-C ends as the CLI does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from speechxfer.log import run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("recipes/*/run.py")) + sorted(ROOT.glob("benchmarks/*.py"))


def test_ctrl_c_is_one_line_naming_the_script_and_exit_130(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)

    def main() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_script(main)
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "tests/test_log.py: interrupted; finished results are as they were"]


def test_a_finished_main_runs_once_and_other_errors_pass_through():
    calls = []
    run_script(lambda: calls.append(1))
    assert calls == [1]

    def main() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_script(main)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_and_benchmark_runs_main_through_run_script(script):
    """A new script that calls ``main()`` bare would print a traceback on Ctrl-C."""
    tree = ast.parse(script.read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test) in ("__name__ == '__main__'", "__name__ == \"__main__\"")]
    assert [ast.unparse(stmt) for block in blocks for stmt in block.body] == [
        "run_script(main)"], f"{script}: end with `if __name__ == \"__main__\": run_script(main)`"


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 10


def test_a_bar_postfix_waits_for_the_bar_s_own_redraw():
    """``set_postfix`` redraws at once by default, showing the count of the last timed redraw:
    a bar over fast steps sat at 0% while its loss changed, and every step wrote the terminal."""
    calls = [node for path in sorted((ROOT / "speechxfer").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "set_postfix"]
    assert calls
    for call in calls:
        assert any(k.arg == "refresh" and ast.unparse(k.value) == "False"
                   for k in call.keywords), ast.unparse(call)
