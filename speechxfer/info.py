"""``speechxfer info``: the environment a bug report needs, in one paste.

Read-only: weights are reported from package metadata and the cache folder as they are, never
downloaded, converted or joined.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from .encoders import ct2
from .encoders.registry import ENCODERS
from .versions import PACKAGES, package_version

WEIGHT_EXTRAS = {"whisper-base": "speechxfer[base]"}  # pip extra that installs an encoder's weights


def cuda() -> dict:
    available = torch.cuda.is_available()
    return {
        "available": available,
        "built_with": torch.version.cuda,  # None: a CPU-only torch build
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if available else [],
    }


def encoders() -> dict:
    """Each encoder that needs weight packages: which are installed, and its converted cache."""
    report = {}
    for name, spec in sorted(ENCODERS.items()):
        if not spec.packages:
            continue
        versions = {p: package_version(p) for p in spec.packages}
        converted = ct2.cache_root() / f"{name}.safetensors"
        report[name] = {
            "installed": all(versions.values()),
            "packages": versions,
            "converted": str(converted) if converted.is_file() else None,
            "install": f"pip install '{WEIGHT_EXTRAS.get(name, ' '.join(spec.packages))}'",
        }
    return report


def cache() -> dict:
    root = ct2.cache_root()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return {"path": str(root), "exists": root.is_dir(), "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "not_a_folder": root.exists() and not root.is_dir()}  # converting there fails


def espeak() -> dict:
    path = shutil.which("espeak-ng")
    version = None
    if path:
        try:
            out = subprocess.run([path, "--version"], check=False, capture_output=True,
                                 text=True, timeout=10)
            version = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return {"path": path, "version": version}


def microphone() -> dict:
    """sounddevice (``speechxfer[mic]``), its PortAudio library and the default input device."""
    report: dict = {"sounddevice": package_version("sounddevice"), "portaudio": None,
                    "input_device": None, "problem": None}
    try:
        import sounddevice
    except ImportError:
        report["problem"] = "sounddevice not installed: pip install 'speechxfer[mic]'"
        return report
    except OSError as err:  # the package is there, the PortAudio library is not
        report["problem"] = f"PortAudio not loadable: {err}"
        return report
    report["portaudio"] = sounddevice.get_portaudio_version()[1]
    try:
        report["input_device"] = sounddevice.query_devices(kind="input")["name"]
    except Exception as err:  # noqa: BLE001 - PortAudioError and friends: no usable input
        report["problem"] = f"no input device: {err}"
    return report


def collect() -> dict:
    """Everything ``speechxfer info`` shows, JSON-ready."""
    return {
        "speechxfer": {"version": __version__, "path": str(Path(__file__).resolve().parent)},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "packages": {name: package_version(name) for name in PACKAGES},
        "cuda": cuda(),
        "encoders": encoders(),
        "cache": cache(),
        "espeak_ng": espeak(),
        "microphone": microphone(),
    }


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def format_text(info: dict) -> str:
    """The report as aligned ``name  value`` lines."""
    py = info["python"]
    rows = [("speechxfer", f"{info['speechxfer']['version']}  ({info['speechxfer']['path']})"),
            ("python", f"{py['version']}  ({py['executable']}; {py['platform']})")]
    rows += [(name, version or "not installed") for name, version in info["packages"].items()]
    c = info["cuda"]
    build = f"torch built with CUDA {c['built_with']}" if c["built_with"] else "CPU-only torch"
    rows.append(("cuda", f"{', '.join(c['devices'])} ({build})" if c["available"]
                 else f"not available ({build})"))
    for name, e in info["encoders"].items():
        packages = ", ".join(f"{p} {v or 'missing'}" for p, v in e["packages"].items())
        state = (f"installed ({packages}); converted: {e['converted'] or 'on first use'}"
                 if e["installed"] else f"not installed ({packages}): {e['install']}")
        rows.append((f"weights {name}", state))
    k = info["cache"]
    rows.append(("cache", f"{k['path']} ({k['files']} files, {_size(k['bytes'])})"
                 if k["exists"] else f"{k['path']} (not a folder: set SPEECHXFER_CACHE to one)"
                 if k["not_a_folder"] else f"{k['path']} (empty; filled on first use)"))
    s = info["espeak_ng"]
    rows.append(("espeak-ng", f"{s['version'] or 'unknown version'} ({s['path']})" if s["path"]
                 else "not found (apt-get install espeak-ng)"))
    m = info["microphone"]
    mic = (f"sounddevice {m['sounddevice']}, {m['portaudio']}, input: {m['input_device']}"
           if m["problem"] is None else m["problem"])
    rows.append(("microphone", mic))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
