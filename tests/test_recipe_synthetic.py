"""The synthetic-voices recipe's output folder (the run itself is slow, its steps are stubbed)."""

import json

import pytest


@pytest.fixture
def run(load_recipe, monkeypatch):
    """The recipe with its measuring steps replaced by ones that return a row at once."""
    module = load_recipe("synthetic")
    built = []

    class Bank:
        def __init__(self, log) -> None:
            self.seconds: dict = {}
            built.append(self)

    monkeypatch.setattr(module, "Bank", Bank)
    monkeypatch.setattr(module, "speech_commands", lambda *args: [{"system": "zero-shot"}])
    monkeypatch.setattr(module, "digits", lambda *args: [])
    monkeypatch.setattr(module, "markdown", lambda rows, meta: "")
    monkeypatch.setattr(module, "plot", lambda rows, path: path.write_bytes(b""))
    module.built = built
    return module


def test_an_out_folder_not_made_yet_gets_the_results(run, tmp_path):
    """It was made without its parents after the whole run: a FileNotFoundError lost it."""
    out = tmp_path / "new" / "results"
    run.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])
    assert json.loads((out / "results_quick.json").read_text())["rows"] == [{"system": "zero-shot"}]


def test_an_out_that_is_a_file_is_refused_before_any_work(run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        run.main(["--quick", "--out", str(taken), "--work", str(tmp_path / "work")])
    assert stop.value.code == 2
    assert f"--out: {taken}: exists and is not a folder" in capsys.readouterr().err
    assert run.built == [] and taken.read_text() == "not a folder"
