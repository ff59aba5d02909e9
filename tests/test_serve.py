"""The HTTP server: /predict answers like `speechxfer predict --json`, with the CLI's messages and
the caps; /listen runs the detector on chunks; the page at / drives both in a real browser."""

from __future__ import annotations

import io
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
from starlette.testclient import TestClient

from speechxfer.cli import main
from speechxfer.serve import create_app

DIGITS = ("2", "5", "8")
HELD_OUT = "5_jackson_3.wav"  # a take the model did not train on
RATE = 8000  # FSDD's


@pytest.fixture(scope="module")
def svm(tmp_path_factory, make_svm):
    return make_svm(tmp_path_factory.mktemp("svm"), DIGITS, range(10, 30))


@pytest.fixture(scope="module")
def client(svm):
    with TestClient(create_app(svm, max_upload_bytes=200_000)) as c:
        yield c


def test_labels_and_health(client):
    labels = client.get("/labels").json()
    assert labels["labels"] == sorted(DIGITS) and labels["commands"] == sorted(DIGITS)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["labels"] == 3


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "audioWorklet" in page.text and "/listen" in page.text


def test_upload_gives_the_right_label_like_predict_json(client, svm, fsdd, capsys):
    data = (fsdd / HELD_OUT).read_bytes()
    answer = client.post("/predict", files={"file": ("take.wav", data, "audio/wav")})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["file"] == "take.wav" and got["label"] == "5"
    assert main(["predict", str(svm), str(fsdd / HELD_OUT), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert set(got) == set(cli)
    assert got["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-6)


def test_file_body_and_raw_pcm(client, fsdd):
    data = (fsdd / HELD_OUT).read_bytes()
    as_file = client.post("/predict", content=data, headers={"content-type": "audio/wav"})
    assert as_file.json()["label"] == "5"
    samples, rate = sf.read(fsdd / HELD_OUT, dtype="int16")
    for fmt, body in (("int16", samples.astype("<i2").tobytes()),
                      ("float32", (samples / 32768).astype("<f4").tobytes())):
        pcm = client.post(f"/predict?rate={rate}&format={fmt}", content=body,
                          headers={"content-type": "application/octet-stream"})
        assert pcm.status_code == 200, pcm.text
        assert pcm.json()["label"] == "5"


def test_top_query_adds_the_cli_top_list(client, svm, fsdd, capsys):
    """?top=K answers predict --json --top K's "top" list; without it the answer has none."""
    data = (fsdd / HELD_OUT).read_bytes()
    main(["predict", str(svm), str(fsdd / HELD_OUT), "--json", "--top", "2"])
    cli = json.loads(capsys.readouterr().out)["top"]
    got = client.post("/predict?top=2", files={"file": ("take.wav", data)}).json()
    assert [t["label"] for t in got["top"]] == [t["label"] for t in cli] and len(cli) == 2
    assert got["top"][0]["label"] == got["label"] == "5"
    assert [set(t) for t in got["top"]] == [{"label", "probability"}] * 2
    assert [t["probability"] for t in got["top"]] == pytest.approx(
        [t["probability"] for t in cli], abs=1e-6)
    samples, rate = sf.read(fsdd / HELD_OUT, dtype="int16")
    for top in ("9", "0" * 3 + "3", "9" * 5000):  # more than the labels: all of them
        pcm = client.post(f"/predict?rate={rate}&top={top}", content=samples.tobytes(),
                          headers={"content-type": "application/octet-stream"}).json()
        probs = [t["probability"] for t in pcm["top"]]
        assert sorted(t["label"] for t in pcm["top"]) == sorted(DIGITS)
        assert probs == sorted(probs, reverse=True)
    assert "top" not in client.post("/predict", files={"file": ("take.wav", data)}).json()


def test_bad_top_is_400_before_the_audio_is_decoded(client):
    for top in ("0", "-1", "1.5", "two", "", " 2", "1e3", "\u00b2"):
        answer = client.post("/predict", params={"top": top},  # not audio: never decoded
                             files={"file": ("notes.wav", b"this is not audio")})
        assert answer.status_code == 400, top
        assert answer.json() == {"error": f"top must be a whole number >= 1, got {top!r}"}


def test_bad_clip_is_400_with_the_cli_message(client, svm, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"this is not audio" * 10)
    answer = client.post("/predict", files={"file": ("notes.wav", bad.read_bytes())})
    assert answer.status_code == 400
    got = answer.json()
    assert got["file"] == "notes.wav" and got["error"].startswith("notes.wav: not readable as audio")
    main(["predict", str(svm), str(bad), "--json"])
    cli = json.loads(capsys.readouterr().out)
    assert got["error"] == cli["error"].replace(str(bad), "notes.wav")


def test_silent_and_short_clips_and_bad_pcm_are_400(client):
    silent = io.BytesIO()
    sf.write(silent, np.zeros(RATE), RATE, format="WAV")
    answer = client.post("/predict", files={"file": ("quiet.wav", silent.getvalue())})
    assert answer.status_code == 400 and answer.json()["error"] == \
        "quiet.wav: silent (peak amplitude below 1e-4)"
    pcm = {"content-type": "application/octet-stream"}
    no_rate = client.post("/predict", content=b"\0\1" * 800, headers=pcm)
    assert no_rate.status_code == 400 and "?rate=" in no_rate.json()["error"]
    odd = client.post("/predict?rate=8000", content=b"\0\1\2", headers=pcm)
    assert odd.status_code == 400 and "whole number of int16" in odd.json()["error"]
    short = client.post("/predict?rate=8000", content=b"\0\x10" * 100, headers=pcm)
    assert short.status_code == 400 and "too short" in short.json()["error"]


def test_a_wav_file_sent_as_raw_pcm_is_refused_not_read_as_samples(client, fsdd):
    """A WAV posted as application/octet-stream had its header read as int16 samples (200,
    another answer) or was told it lacked a rate; now it is told to send its audio type."""
    data = (fsdd / HELD_OUT).read_bytes()
    for query in ("", f"?rate={RATE}"):
        answer = client.post(f"/predict{query}", content=data,
                             headers={"content-type": "application/octet-stream"})
        assert answer.status_code == 400
        assert "an audio file (it starts with b'RIFF'), not raw PCM" in answer.json()["error"]


def test_too_large_is_413(client):
    big = b"\0" * 200_001  # over the app's 200 kB cap: refused before anything is decoded
    answer = client.post("/predict", files={"file": ("big.wav", big)})
    assert answer.status_code == 413 and "200000-byte cap" in answer.json()["error"]
    chunked = client.post("/predict?rate=8000", content=iter([b"\0" * 100_000] * 3),
                          headers={"content-type": "application/octet-stream"})  # no length
    assert chunked.status_code == 413 and "200000-byte cap" in chunked.json()["error"]


def test_too_long_clip_is_413(client):
    long = io.BytesIO()  # 31 s at 100 Hz: small, but over the 30-s clip cap
    sf.write(long, 0.1 * np.ones(3100), 100, format="WAV")
    answer = client.post("/predict", files={"file": ("long.wav", long.getvalue())})
    assert answer.status_code == 413 and answer.json()["error"].startswith("long.wav: too long")


def test_wrong_content_type_is_415(client):
    answer = client.post("/predict", content=b'{"path": "/etc/passwd"}',
                         headers={"content-type": "application/json"})
    assert answer.status_code == 415 and "unsupported content type" in answer.json()["error"]


def test_multipart_without_the_file_field_is_400(client, fsdd):
    answer = client.post("/predict", files={"audio": ("take.wav", (fsdd / HELD_OUT).read_bytes())})
    assert answer.status_code == 400 and "'file'" in answer.json()["error"]


def spoken(fsdd: Path, name: str, rate: int = RATE) -> np.ndarray:
    """A take with 0.8 s of quiet noise before and 1 s after it, as float32."""
    take = sf.read(fsdd / name, dtype="float32")[0]
    rng = np.random.default_rng(0)
    pad = [0.002 * rng.standard_normal(n).astype(np.float32) for n in (rate * 8 // 10, rate)]
    return np.concatenate([pad[0], take, pad[1]])


def test_listen_yields_the_spoken_command(client, fsdd):
    audio = spoken(fsdd, HELD_OUT)
    with client.websocket_connect("/listen") as ws:
        ws.send_text(json.dumps({"sample_rate": RATE, "format": "int16"}))
        assert ws.receive_json()["type"] == "ready"
        pcm = (audio * 32767).astype("<i2")
        for at in range(0, len(pcm), 1234):  # odd chunks, as a microphone callback gives
            ws.send_bytes(pcm[at: at + 1234].tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        messages = []
        while (m := ws.receive_json())["type"] != "done":
            messages.append(m)
    assert [m["label"] for m in messages] == ["5"]
    assert 0.7 < messages[0]["start"] < messages[0]["end"] < len(audio) / RATE


def test_listen_refuses_a_bad_start_and_odd_bytes(client):
    with client.websocket_connect("/listen") as ws:
        ws.send_bytes(b"\0\0\0\0")
        error = ws.receive_json()
        assert error["type"] == "error" and "sample_rate" in error["error"]
    with client.websocket_connect("/listen") as ws:
        ws.send_text(json.dumps({"sample_rate": 0}))
        assert "invalid sample rate 0" in ws.receive_json()["error"]
    with client.websocket_connect("/listen") as ws:
        ws.send_text(json.dumps({"sample_rate": 16000, "format": "float32"}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"\0\0\0")
        assert "not whole float32 samples" in ws.receive_json()["error"]
    with client.websocket_connect("/listen") as ws:
        ws.send_text(json.dumps({"sample_rate": 16000, "format": "float32"}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(bytes(2**20 + 4))
        assert "over the 1048576-byte cap" in ws.receive_json()["error"]


def test_unscaled_integer_pcm_sent_as_float32_is_an_error_not_a_label(client, fsdd):
    """int16 values sent as float32 (a client that forgot to divide by 32768): /predict says so
    with 400, and /listen sends an error message instead of crashing the connection."""
    audio = spoken(fsdd, HELD_OUT) * 32767
    answer = client.post(f"/predict?rate={RATE}&format=float32",
                         content=audio.astype("<f4").tobytes(),
                         headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 400 and "far beyond full scale" in answer.json()["error"]
    with client.websocket_connect("/listen") as ws:
        ws.send_text(json.dumps({"sample_rate": RATE, "format": "float32"}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(audio[:4000].astype("<f4").tobytes())
        error = ws.receive_json()
        assert error["type"] == "error" and "far beyond full scale" in error["error"]


def test_cross_origin_websocket_is_refused(client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, \
            client.websocket_connect("/listen", headers={"origin": "http://evil.example"}):
        pass
    assert refused.value.code == 1008


def test_cli_serve_binds_loopback_by_default(svm, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(svm), "--port", "8123", "--device", "cpu"]) == 0
    (app, options), = calls
    assert options["host"] == "127.0.0.1" and options["port"] == 8123
    assert TestClient(app).get("/labels").json()["labels"] == sorted(DIGITS)


def test_cli_serve_without_the_extra_says_so(svm, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "speechxfer.serve")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", str(svm)]) == 2
    assert "pip install 'speechxfer[serve]'" in capsys.readouterr().err


# --- the page in a real browser -------------------------------------------------------------

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM) if p), None)


class Server:
    """uvicorn serving an app on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def browser_session(model, wav: Path, upload: Path, shot: Path | None = None, events: int = 1):
    """Open the page in headless Chromium with ``wav`` as the microphone, start listening, wait
    for ``events`` heard commands, recognise ``upload`` with the form; return the last command
    heard and the upload's label."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = _chromium()
    if chromium is None:
        print("browser test skipped: no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"]
    with Server(create_app(model)) as server, playwright.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, args=args)
        except playwright.Error as err:  # a browser that cannot start here: say why
            print(f"browser test skipped: {chromium} did not start ({err})")
            pytest.skip(f"{chromium} did not start: {err}")
        try:
            page = browser.new_page(viewport={"width": 920, "height": 600})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            page.wait_for_selector("#commands .chip")
            page.click("#mic")
            page.wait_for_selector(f"#events tr:nth-child({events})", timeout=30_000 * events)
            heard = page.inner_text("#heard")
            page.set_input_files("#file", str(upload))
            page.click("#upload button")
            page.wait_for_selector("#upload-label", timeout=30_000)
            uploaded = page.inner_text("#upload-label b")
            if shot is not None:
                page.wait_for_timeout(300)
                page.screenshot(path=str(shot), full_page=True)
            page.click("#mic")
            page.wait_for_selector("#mic:has-text('Start listening')")
            assert errors == [], errors
        finally:
            browser.close()
    return heard, uploaded


def fake_microphone(fsdd: Path, name: str, out: Path) -> Path:
    """A 16-bit 48-kHz WAV for Chromium's fake microphone (it loops the file): the take with
    quiet before and after, so each loop is one word between pauses."""
    import torch

    from speechxfer.audio import resample

    audio = resample(torch.from_numpy(spoken(fsdd, name)), RATE, 48_000).numpy()
    sf.write(out, audio, 48_000, subtype="PCM_16")
    return out


@pytest.mark.slow
def test_page_in_headless_chromium_shows_the_spoken_command(svm, fsdd, tmp_path):
    wav = fake_microphone(fsdd, HELD_OUT, tmp_path / "mic.wav")
    heard, uploaded = browser_session(svm, wav, fsdd / "8_jackson_3.wav")
    assert heard == "5"
    assert uploaded == "8"


def test_a_taken_port_is_one_line_and_exit_2_before_the_model_loads(tmp_path, capsys):
    """uvicorn would log the bind error among its start-up lines and exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        no_model = tmp_path / "not-a-model"  # the address is checked first
        assert main(["serve", str(no_model), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"speechxfer serve: error: 127.0.0.1:{port}: cannot listen there "
                           "(Address already in use)")
    assert main(["serve", str(no_model), "--host", "no-such-host.invalid"]) == 2
    assert "--host no-such-host.invalid: not an address of this machine" in capsys.readouterr().err
