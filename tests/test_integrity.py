"""Training integrity: same seed -> same weights, a killed run resumes to the uninterrupted
result, a checkpoint is only reused by the run that made it, model folders are written whole,
and one training at a time writes an output folder."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechxfer import CommandClassifier, jobs, load_model
from speechxfer.classic import build_classic, load_classic
from speechxfer.cli import main
from speechxfer.jobs import train_job
from speechxfer.log import LOGGER
from speechxfer.recognizer import is_model_folder
from speechxfer.store import (
    StoreError,
    atomic_folder,
    check_replaceable,
    training_folder,
    work_folder,
)
from speechxfer.train import Checkpointer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_fsdd) -> Path:
    """Three speakers, three digits, three takes: 2 clips per label per speaker are kept."""
    return make_fsdd(tmp_path_factory.mktemp("integrity") / "fsdd", ("jackson", "george", "theo"),
                     ("1", "4", "7"), 3)


@pytest.fixture
def warnings_seen():
    """Messages the speechxfer logger emits at WARNING or above (whatever else configured it)."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep(logging.WARNING)
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(min(level or logging.WARNING, logging.WARNING))
    yield seen
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(wa[k].shape == wb[k].shape for k in wa)
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())
    assert worst <= atol, f"weights differ by up to {worst}"


EPOCHS = 12  # frozen runs: epochs cost milliseconds, the encoder pass dominates


def run(data: Path, out: Path, strategy: str = "frozen", **options) -> dict:
    options = {"per_class_n": 2, "epochs": EPOCHS, "window": "clip", "test_speakers": ["theo"],
               "evaluate": False} | options
    return train_job(data, strategy=strategy, out=out, **options)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """An uninterrupted frozen run: what every resumed or repeated run must equal."""
    out = tmp_path_factory.mktemp("whole") / "m"
    torch.manual_seed(123)  # whatever state the process is in, the seed decides
    run(data, out)
    assert not work_folder(out).exists()  # a finished run leaves no checkpoint behind
    return out


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """The checkpoint a frozen run leaves when it dies right after its first epoch."""
    out = tmp_path_factory.mktemp("crashed") / "m"
    real_save = Checkpointer.save

    def crash(self, *args):
        real_save(self, *args)
        raise KeyboardInterrupt("simulated kill")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Checkpointer, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            run(data, out)
    assert (work_folder(out) / "checkpoint" / "state.json").is_file()
    return work_folder(out) / "checkpoint"


def leave_checkpoint(checkpoint: Path, out: Path) -> Path:
    """Put the crashed run's checkpoint where a run into ``out`` looks for it."""
    return Path(shutil.copytree(checkpoint, work_folder(out) / "checkpoint"))


# ---- same seed, same weights -----------------------------------------------------------------
def test_same_seed_gives_identical_frozen_weights(data, whole, tmp_path):
    torch.manual_seed(7)
    run(data, tmp_path / "again")
    assert_same_weights(tmp_path / "again", whole)


@pytest.mark.parametrize("strategy, options", [
    ("top-k", {"k": 1, "epochs": 2}),
    ("scratch", {"encoder": "ds-cnn", "window": None, "epochs": 3}),
    ("svm", {}),
])
def test_same_seed_gives_identical_weights(data, tmp_path, strategy, options):
    torch.manual_seed(123)
    run(data, tmp_path / "a", strategy, seed=3, **options)
    run(data, tmp_path / "b", strategy, seed=3, **options)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert not work_folder(tmp_path / "a").exists()


def saved_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor under a model folder (sub-models included) and the config's learnt numbers."""
    tensors = {f"{f.relative_to(folder)}:{k}": v for f in sorted(folder.rglob("*.safetensors"))
               for k, v in load_file(str(f)).items()}
    config = json.loads((folder / "config.json").read_text())
    return tensors, {k: config.get(k) for k in ("labels", "weight", "threshold", "temperature")}


@pytest.mark.parametrize("strategy, options", [
    ("full", {"epochs": 1}),
    ("reinit-k", {"k": 1, "epochs": 1}),
    ("combined", {"epochs": 4}),
    pytest.param("generative", {}, marks=pytest.mark.slow),  # about 70 s on 2 cores
    ("dtw", {}),
    ("gmm-hmm", {}),
])
def test_same_seed_gives_the_same_model_for_every_other_strategy(data, tmp_path, strategy, options):
    torch.manual_seed(5)
    run(data, tmp_path / "a", strategy, seed=2, **options)
    torch.manual_seed(6)  # a different process state: only the seed may decide
    run(data, tmp_path / "b", strategy, seed=2, **options)
    (ta, ca), (tb, cb) = saved_state(tmp_path / "a"), saved_state(tmp_path / "b")
    assert ca == cb
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


# ---- kill and resume ----------------------------------------------------------------------------
def cli_train(data: Path, out: Path, strategy: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "speechxfer", "train", "--data", str(data), "--strategy",
            strategy, "--per-class", "2", "--epochs", str(epochs), "--window", "clip",
            "--test-speaker", "theo", "--out", str(out), *extra]


def kill_after_first_checkpoint(command: list[str], out: Path, limit: float = 120) -> None:
    state = work_folder(out) / "checkpoint" / "state.json"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + limit
        while not state.exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def kill_and_resume(data: Path, out: Path, strategy: str, epochs: int, *extra: str) -> None:
    """SIGKILL a CLI training once its first checkpoint exists, then run it again to the end."""
    command = cli_train(data, out, strategy, epochs, *extra)
    kill_after_first_checkpoint(command, out)
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] is not None
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
    assert not work_folder(out).exists()


def test_killed_frozen_run_resumes_to_the_uninterrupted_weights(data, whole, tmp_path):
    kill_and_resume(data, tmp_path / "killed", "frozen", EPOCHS)
    assert_same_weights(tmp_path / "killed", whole, atol=1e-6)


@pytest.mark.slow
def test_killed_top_k_run_resumes_to_the_uninterrupted_weights(data, tmp_path):
    kill_and_resume(data, tmp_path / "killed", "top-k", 6, "--k", "1")
    run(data, tmp_path / "whole", "top-k", k=1, epochs=6)
    assert_same_weights(tmp_path / "killed", tmp_path / "whole", atol=1e-6)


def test_resume_restores_dropout_randomness(data, whole, checkpoint, tmp_path):
    """A run that died after epoch 1, resumed in another process state: equal to a whole run."""
    out = tmp_path / "resumed"
    leave_checkpoint(checkpoint, out)
    torch.manual_seed(99)
    summary = run(data, out)
    assert summary["resumed_from_epoch"] == 1
    assert_same_weights(out, whole)


# ---- a checkpoint belongs to the run that made it -----------------------------------------------
@pytest.mark.parametrize("change", [
    {"test_speakers": ["george"]},
    {"window": "1s"},
    {"pooling": "attentive"},
])
def test_changed_options_do_not_reuse_the_checkpoint(data, checkpoint, tmp_path, change,
                                                     warnings_seen):
    out = tmp_path / "m"
    leave_checkpoint(checkpoint, out)
    summary = run(data, out, **change)
    assert summary["resumed_from_epoch"] is None
    assert [h["epoch"] for h in summary["history"]] == list(range(1, EPOCHS + 1))
    discarded = [m for m in warnings_seen if m.startswith("discarding checkpoint")]
    assert len(discarded) == 1 and "other data or options" in discarded[0]
    if "test_speakers" in change:
        assert summary["train_speakers"] == ["jackson", "theo"]
        assert "identity.test_speakers" in discarded[0]


@pytest.mark.parametrize("torn", ["state.json", "optimizer.safetensors"])
def test_torn_checkpoint_is_reported_and_discarded(data, whole, checkpoint, tmp_path, torn,
                                                   warnings_seen):
    out = tmp_path / "m"
    file = leave_checkpoint(checkpoint, out) / torn
    file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
    summary = run(data, out)
    assert summary["resumed_from_epoch"] is None and len(summary["history"]) == EPOCHS
    discarded = [m for m in warnings_seen if m.startswith("discarding checkpoint")]
    assert len(discarded) == 1 and f"{torn} is unreadable" in discarded[0]
    assert_same_weights(out, whole)  # a fresh start, as if there had been no checkpoint
    assert not work_folder(out).exists()


# ---- whole folders, one writer ------------------------------------------------------------------
def test_atomic_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target, lambda p: True) as folder:
        (folder / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target, lambda p: True) as folder:
        (folder / "a").write_text("new")
        raise RuntimeError("killed mid-save")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with (pytest.raises(StoreError, match="refusing to replace"),
          atomic_folder(tmp_path / "mine", lambda p: False)):
        pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_train_and_ensemble_never_write_inside_another_saved_model(data, make_svm, tmp_path,
                                                                   capsys):
    """OTHER/head is a part of OTHER: writing a model there would break OTHER."""
    other = make_svm(tmp_path / "other", ("1", "4"), range(10, 13))
    a = make_svm(tmp_path / "a", ("1", "4"), range(10, 13), speaker="george")
    b = make_svm(tmp_path / "b", ("1", "4"), range(10, 13), speaker="theo")
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    (tmp_path / "latest").symlink_to(other)  # a link into OTHER writes into it just the same
    for command in (["train", "--data", str(data), "--strategy", "svm", "--test-speaker", "theo"],
                    ["ensemble", str(a), str(b)]):
        for out in (other / "head", other / "sub" / "x", tmp_path / "latest" / "sub"):
            assert main([*command, "--out", str(out)]) == 2  # any depth: was written, exit 0
            assert f"lies inside the saved folder {other}" in capsys.readouterr().err
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before
    with atomic_folder(other / "fast", is_model_folder, part=True) as folder:  # its own part
        (folder / "config.json").write_text("{}")
    assert (other / "fast" / "config.json").is_file()


def test_a_part_is_written_only_by_an_owner_outside_other_saved_folders(tmp_path):
    """MODEL/fast is MODEL's own part; with MODEL inside OTHER, writing it changes OTHER."""
    def owned(folder):
        return (folder / "config.json").read_text() == "mine"

    other, sub = tmp_path / "other", tmp_path / "other" / "sub" / "model"
    for folder in (other, sub):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("mine")
    with atomic_folder(tmp_path / "model" / "fast", owned, part=True) as folder:
        (folder / "graph").write_text("ok")
    inside = re.escape(f"lies inside the saved folder {other},")
    with pytest.raises(StoreError, match=inside), atomic_folder(sub / "fast", owned, part=True):
        pass
    (tmp_path / "link").symlink_to(sub.parent)  # a link to OTHER/sub: written into OTHER
    for out in (other / "a" / "b" / "c", tmp_path / "link" / "x"):
        with pytest.raises(StoreError, match=inside):
            check_replaceable(out, owned)
    assert not (sub / "fast").exists() and not (other / "a").exists()


def test_interrupted_save_leaves_weights_and_config_of_one_model(tmp_path, monkeypatch):
    torch.manual_seed(0)
    from speechxfer.encoders import build_encoder

    def model(labels):
        return CommandClassifier(build_encoder("ds-cnn", pretrained=False), {"command": labels})

    first = model(["a", "b"])
    first.save(tmp_path / "m")
    second = model(["a", "b", "c"])
    monkeypatch.setattr(CommandClassifier, "config", lambda self: 1 / 0)  # dies after the weights
    with pytest.raises(ZeroDivisionError):
        second.save(tmp_path / "m")
    monkeypatch.undo()
    again = load_model(tmp_path / "m")
    assert again.labels == ["a", "b"]
    assert_same_weights(tmp_path / "m", first.save(tmp_path / "copy"))


def test_interrupted_classic_save_keeps_the_old_model(tmp_path, monkeypatch):
    waves = [torch.sin(torch.arange(8000) * f / 100) * 0.3 for f in (3, 4, 9, 10)]
    old = build_classic("svm").fit(waves, ["low", "low", "high", "high"])
    old.save(tmp_path / "m")
    new = build_classic("svm").fit(waves, ["a", "b", "c", "c"])
    monkeypatch.setattr(type(new), "options", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        new.save(tmp_path / "m")
    monkeypatch.undo()
    assert load_classic(tmp_path / "m").labels == ["high", "low"]


def test_interrupted_finish_keeps_reports_and_model_together(data, tmp_path, monkeypatch):
    out = tmp_path / "m"
    run(data, out, "svm")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = jobs.write_report

    def report_then_die(report, directory, *args):
        real(report, directory, *args)
        raise KeyboardInterrupt("killed after the reports")

    monkeypatch.setattr(jobs, "write_report", report_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(data, out, "svm", test_speakers=["george"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_second_training_into_a_busy_out_is_refused(data, tmp_path):
    out = tmp_path / "m"
    with (training_folder(out, lambda p: True),
          pytest.raises(StoreError, match=rf"another training \(PID {os.getpid()}\)")):
        run(data, out, "svm")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work_folder(out)).mkdir(exist_ok=True)
    (work_folder(out) / "lock").write_text(f"{dead.pid}\n")  # a stale lock: taken over
    run(data, out, "svm")
    assert (out / "model.safetensors").is_file() and not work_folder(out).exists()


def test_a_run_that_fails_before_any_checkpoint_leaves_no_work_folder(tmp_path):
    """A typo in --data left an empty OUT.partial beside every failed run's --out."""
    with pytest.raises(jobs.DatasetError, match="no such"):
        train_job(tmp_path / "no data", strategy="svm", out=tmp_path / "m")
    assert not work_folder(tmp_path / "m").exists() and not (tmp_path / "m").exists()


def test_a_folder_named_like_the_work_folder_is_not_taken_and_deleted(data, tmp_path):
    """OUT.partial is removed when the run ends: one the user made is refused, not emptied."""
    mine = work_folder(tmp_path / "m")
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"m\.partial: holds other files \(notes\.txt\)"):
        run(data, tmp_path / "m", "svm")
    assert (mine / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_fails_before_training(data, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "load_dataset", lambda *a: pytest.fail("read data"))
    target = tmp_path / "model"
    target.write_text("not a folder")
    with pytest.raises(StoreError, match="not a folder"):
        run(data, target)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(StoreError, match="refusing to replace"):
        run(data, other)
    assert (other / "todo.txt").read_text() == "mine"
