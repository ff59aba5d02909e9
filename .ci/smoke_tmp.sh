#!/usr/bin/env bash
# CI entry point. On the default Python: install the project with its test extras and the
# known-good torch/torchaudio pair (.ci/constraints.txt), run the test suite, then the wheel test and the slow
# integrity tests (top-k kill-and-resume, generative determinism), and the serve page in headless
# Chromium.
# On each other supported Python: a fresh venv, `pip install -e .`, and the README's main-job
# smoke run (train, then predict a held-out clip); skipped, with the reason, if absent. 3.13 gets
# the newest torch pyproject.toml allows (.ci/constraints-newest.txt), so both ends are checked.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null; then  # the synthesiser tests/test_synth.py drives
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq espeak-ng
fi
if ! command -v chromium >/dev/null; then  # the headless browser tests/test_serve.py drives
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser test will be skipped"
fi

find_python() {  # an interpreter of version $1 (e.g. 3.12), or nothing
  local candidate
  for candidate in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python \
                   "/usr/bin/python$1"; do
    if "$candidate" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$1')" \
         >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
}

WORK=$(mktemp -d)  # the venvs hold a CUDA torch build each: removed as soon as done
trap 'rm -rf "$WORK"' EXIT

smoke() {  # $1 = version, $2 = constraints: fresh venv, install, train briefly, predict a clip
  local python work label started
  python=$(find_python "$1")
  if [ -z "$python" ]; then
    echo "smoke on Python $1: skipped, no Python $1 interpreter found"
    return
  fi
  started=$SECONDS
  work="$WORK/$1"
  "$python" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -qq -c "$2" -e .  # -qq: errors only
  "$work/venv/bin/speechxfer" train --per-class 1 --epochs 1 --out "$work/model"
  label=$("$work/venv/bin/speechxfer" predict "$work/model" data/fsdd/recordings/3_theo_7.wav \
          | cut -f2)
  if [ "$label" != 3 ]; then
    echo "smoke on Python $1 ($python): predicted '$label' for 3_theo_7.wav, expected '3'"
    return 1
  fi
  echo "smoke on Python $1 ($python, $("$work/venv/bin/python" -c \
    'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')):" \
    "install, train, predict '3' ok in $((SECONDS - started)) s"
  rm -rf "$work"
}

smoke 3.12 .ci/constraints.txt
smoke 3.13 .ci/constraints-newest.txt
