"""A saved model over HTTP: ``POST /predict`` for a clip, a WebSocket ``/listen`` that runs the
streaming detector on a live microphone, and a one-page demo at ``/`` (``speechxfer/web``).

Why this shape:
- Starlette (the ASGI toolkit FastAPI is built on) and uvicorn: five routes need routing, a
  multipart parser and WebSockets, nothing more; both are an optional extra (``speechxfer[serve]``).
- A request body is read into memory under a byte cap and decoded there (``audio.decode``): the
  name a client gives its file only appears in messages, never as a path.
- Errors are the library's own: bad audio answers the ``AudioError`` text ``speechxfer predict``
  prints, as JSON, with 400 (or 413 for a clip over the length cap).
- Each model call runs in a worker thread under one lock: the event loop keeps answering while a
  model runs, and a model is never run from two threads at once.
- The page sends its microphone at the audio device's own rate and the detector resamples (it
  takes any rate), so the page does no signal processing.

Protocols
- ``POST /predict``: ``multipart/form-data`` with the file in the field ``file``; or the file
  itself as the body with an ``audio/*`` content type (``audio/wav``, ``audio/flac``, ...); or raw
  little-endian PCM as ``application/octet-stream`` with the query parameters ``rate`` (Hz,
  required), ``format`` (``int16``, the default, or ``float32``) and ``channels`` (interleaved,
  default 1). The answer is a ``speechxfer predict --json`` line: ``file``, ``label``,
  ``probability``, ``probabilities``, ``tasks``, ``embeddings``; or ``file`` and ``error``.
  ``?top=K`` (any body) adds ``predict --json --top K``'s ``top``: the K likeliest labels,
  ``[{"label", "probability"}, ...]``, best first.
- ``/listen``: first a text message ``{"sample_rate": R, "format": "float32" | "int16"}``, then
  binary messages of mono little-endian samples in that format, any length up to
  ``MAX_CHUNK_BYTES``; the text message ``{"type": "end"}`` flushes the detector and closes.
  The server sends ``{"type": "ready", ...}``, then ``{"type": "event", "label", "probability",
  "start", "end", "heard_at"}`` (stream seconds) as each command ends, ``{"type": "done"}`` after
  ``end``, or ``{"type": "error", "error": ...}`` before it closes the connection.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

try:
    import python_multipart  # noqa: F401  (what starlette parses uploads with)
    import uvicorn
    import websockets  # noqa: F401  (what uvicorn speaks WebSocket with)
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as err:  # the optional extra
    raise ImportError(f"serving needs the serve extra: pip install 'speechxfer[serve]' ({err})") \
        from err

from .audio import MAX_SECONDS, AudioError, decode, to_mono_resampled
from .vocab import is_command

if TYPE_CHECKING:
    import torch

    from speechxfer import Recognizer

HOST = "127.0.0.1"  # this machine only: expose it on purpose (--host 0.0.0.0), never by default
PORT = 8000
MAX_UPLOAD_BYTES = 16 * 2**20  # a 30-s (MAX_SECONDS) 48-kHz stereo float WAV is 11.5 MB
MAX_CHUNK_BYTES = 2**20  # one WebSocket message: over a second of 192-kHz float32
MAX_NAME_CHARS = 200  # of a client's file name, echoed in answers
PCM_FORMATS = {"int16": "<i2", "float32": "<f4"}
BODY = "<request body>"  # the source named in messages about a body that is not a named file
# how audio files begin (WAV, RF64, FLAC, Ogg, AIFF, MP3 with a tag): a body sent as raw PCM
# that starts so is a file whose header would be read as samples
FILE_SIGNATURES = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3")


def _error(status: int, message: str, **fields) -> JSONResponse:
    return JSONResponse({**fields, "error": message}, status_code=status)


def _audio_error(err: AudioError, name: str) -> JSONResponse:
    """``predict --json``'s error line; a clip over the length cap is 413, other bad audio 400."""
    status = 413 if err.problem.startswith("too long") else 400
    return _error(status, str(err), file=name)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes ``limit`` bytes (declared or not)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared)} bytes is over the "
                                 f"{limit}-byte cap")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise HTTPException(413, f"request body is over the {limit}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes, limit: int) -> tuple[str, bytes]:
    """The ``file`` field of a multipart body, parsed from memory (never spooled to disk)."""
    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                             max_part_size=limit)
    parser.spool_max_size = limit + 1  # the upload stays in memory
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"bad multipart body: {err.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "multipart body has no file in the field 'file'")
        name = (upload.filename or "upload")[:MAX_NAME_CHARS]
        return name, await upload.read()
    finally:
        await form.close()


def _pcm(body: bytes, query: dict[str, str]) -> tuple[np.ndarray, int]:
    """Raw little-endian PCM and its rate, from the ``rate``/``format``/``channels`` query."""
    if body.startswith(FILE_SIGNATURES):
        raise AudioError(BODY, f"an audio file (it starts with {body[:4]!r}), not raw PCM: send "
                               "it as audio/wav (audio/flac, ...) or a multipart upload")
    fmt = query.get("format", "int16")
    if fmt not in PCM_FORMATS:
        raise AudioError(BODY, f"unknown PCM format {fmt!r}: use one of {', '.join(PCM_FORMATS)}")
    try:
        rate = int(query["rate"])
        channels = int(query.get("channels", "1"))
    except KeyError:
        raise AudioError(BODY, "raw PCM needs its sample rate: add ?rate=HZ") from None
    except ValueError:
        raise AudioError(BODY, "rate and channels must be whole numbers") from None
    if not 1 <= channels <= 64:
        raise AudioError(BODY, f"channels must be 1 to 64, got {channels}")
    width = np.dtype(PCM_FORMATS[fmt]).itemsize * channels
    if len(body) % width:
        raise AudioError(BODY, f"{len(body)} bytes is not a whole number of {fmt} "
                               f"{channels}-channel frames")
    return np.frombuffer(body, PCM_FORMATS[fmt]).reshape(-1, channels).copy(), rate


def _top(query: dict[str, str]) -> int | None:
    """The ``top`` query parameter: None when absent, else a whole number >= 1 (HTTP 400)."""
    text = query.get("top")
    if text is None:
        return None
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit() and digits):
        raise HTTPException(400, f"top must be a whole number >= 1, got {text[:20]!r}")
    return int(digits) if len(digits) < 19 else sys.maxsize  # all; int() refuses 4300 digits


def create_app(
    model: str | Path | Recognizer,
    *,
    device: str | torch.device = "cpu",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    detector: Callable[[Recognizer, int], object] | None = None,
) -> Starlette:
    """The ASGI app serving ``model`` (a saved model's folder, or a loaded ``Recognizer``).

    ``detector(model, sample_rate)`` builds one listener's detector (default: ``detect.Detector``
    at the model's own threshold); anything with ``feed(samples)`` and ``flush()`` returning
    events will do.
    """
    speakers = None  # the folder's enrolled voiceprints, as predict --json reports them
    if isinstance(model, (str, Path)):
        from . import load_model
        from .voiceprint import scorer_for

        folder = model
        model = load_model(folder, device)
        speakers = scorer_for(folder, model)
    if detector is None:
        from .detect import Detector

        def detector(m, rate):
            return Detector(m, None, rate)

    if max_upload_bytes < 1 or max_chunk_bytes < 1:
        raise ValueError("byte caps must be positive")
    lock = threading.Lock()
    listening = [0]

    def locked(fn: Callable, *args):
        with lock:
            return fn(*args)

    async def index(request: Request) -> HTMLResponse:
        page = resources.files("speechxfer").joinpath("web/index.html").read_text("utf-8")
        return HTMLResponse(page)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "labels": len(model.labels),
                             "sample_rate": model.sample_rate, "listeners": listening[0]})

    async def labels(request: Request) -> JSONResponse:
        return JSONResponse({"labels": list(model.labels),
                             "commands": [lab for lab in model.labels if is_command(lab)],
                             "sample_rate": model.sample_rate, "threshold": model.threshold,
                             "max_seconds": MAX_SECONDS, "max_upload_bytes": max_upload_bytes})

    async def predict(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("multipart/form-data", "application/octet-stream") \
                and not kind.startswith("audio/"):
            return _error(415, f"unsupported content type {kind or 'none'!r}: send a "
                               "multipart/form-data upload (field 'file'), an audio/* file, or "
                               "application/octet-stream PCM with ?rate=HZ")
        top = _top(dict(request.query_params))  # before the body is read or decoded
        body = await _read_body(request, max_upload_bytes)
        name = BODY
        try:
            if kind == "application/octet-stream":
                samples, rate = _pcm(body, dict(request.query_params))
                wave = await run_in_threadpool(to_mono_resampled, samples, rate,
                                               model.sample_rate, BODY)
            else:
                if kind == "multipart/form-data":
                    name, body = await _multipart_file(request, body, max_upload_bytes)
                wave = await run_in_threadpool(decode, body, name, model.sample_rate)
            pred = await run_in_threadpool(locked, model.predict, wave, model.sample_rate)
            speaker = (await run_in_threadpool(locked, speakers.identify, wave)
                       if speakers else None)
        except AudioError as err:
            return _audio_error(err, name)
        return JSONResponse({"file": name, **pred.to_dict()}
                            | ({"top": pred.top_dicts(top)} if top else {})
                            | ({"speaker": speaker} if speaker else {}))

    async def listen(ws: WebSocket) -> None:
        origin = ws.headers.get("origin")
        if origin and urlsplit(origin).netloc != ws.headers.get("host"):
            await ws.close(code=1008, reason="cross-origin WebSocket refused")
            return
        await ws.accept()
        listening[0] += 1
        try:
            await _listen(ws)
        except WebSocketDisconnect:
            pass
        finally:
            listening[0] -= 1

    async def _listen(ws: WebSocket) -> None:
        async def fail(message: str, code: int = 1003) -> None:
            await ws.send_json({"type": "error", "error": message})
            await ws.close(code=code)

        first = await ws.receive()
        if first["type"] == "websocket.disconnect":
            return
        try:
            config = json.loads(first.get("text") or "")
            rate, fmt = config["sample_rate"], config.get("format", "float32")
            if fmt not in PCM_FORMATS:
                raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(PCM_FORMATS)}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            await fail('send {"sample_rate": HZ, "format": "float32"|"int16"} first '
                       f"({err.__class__.__name__}: {err})")
            return
        try:
            det = await run_in_threadpool(locked, detector, model, rate)  # torch threads too
        except AudioError as err:
            await fail(str(err))
            return
        await ws.send_json({"type": "ready", "sample_rate": rate, "format": fmt,
                            "labels": list(model.labels)})
        dtype = PCM_FORMATS[fmt]
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > max_chunk_bytes:
                    await fail(f"chunk of {len(data)} bytes is over the {max_chunk_bytes}-byte "
                               "cap", 1009)
                    return
                if len(data) % np.dtype(dtype).itemsize:
                    await fail(f"chunk of {len(data)} bytes is not whole {fmt} samples")
                    return
                try:  # float32 chunks of unscaled integer PCM, say
                    events = await run_in_threadpool(locked, det.feed,
                                                     np.frombuffer(data, dtype).copy())
                except AudioError as err:
                    await fail(str(err))
                    return
            elif text is not None and _is_end(text):
                events = await run_in_threadpool(locked, det.flush)
            else:
                await fail('text messages other than {"type": "end"} are not understood')
                return
            for e in events:
                await ws.send_json({"type": "event", "label": e.label,
                                    "probability": e.probability, "start": e.start,
                                    "end": e.end, "heard_at": getattr(e, "heard_at", e.end)})
            if data is None:
                await ws.send_json({"type": "done"})
                await ws.close()
                return

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, exc.detail)

    return Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/labels", labels),
                Route("/predict", predict, methods=["POST"]), WebSocketRoute("/listen", listen)],
        exception_handlers={HTTPException: http_error},
    )


def _is_end(text: str) -> bool:
    try:
        return json.loads(text) == {"type": "end"}
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """A ValueError naming the address when it cannot be listened on (taken, not this
    machine's), before the model loads: uvicorn would log it among its start-up lines and
    exit 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host}: not an address of this machine ({err})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise ValueError(f"{host}:{port}: cannot listen there ({err.strerror})") from None


def serve(model: str | Path | Recognizer, host: str = HOST, port: int = PORT, *,
          device: str | torch.device = "cpu", log_level: str = "info", **limits) -> None:
    """Run the app with uvicorn until interrupted."""
    check_address(host, port)
    app = create_app(model, device=device, **limits)
    chunk = limits.get("max_chunk_bytes", MAX_CHUNK_BYTES)
    uvicorn.run(app, host=host, port=port, ws_max_size=chunk + 1024, log_level=log_level)
