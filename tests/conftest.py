import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
from speechbrain.utils.importutils import LazyModule

import speechxfer.augment  # noqa: F401  (registers speechbrain's lazy modules now, see below)


def _drop_unimportable_lazy_modules() -> None:
    """speechbrain puts lazy modules for optional extras (k2, spacy, ...) in sys.modules; reading
    their ``__file__`` raises ImportError, and hypothesis reads it for every module it sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in list(sys.modules.items()):
            if isinstance(module, LazyModule):
                try:
                    module.__file__  # noqa: B018
                except ImportError:
                    del sys.modules[name]


_drop_unimportable_lazy_modules()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load_recipe():
    """``load_recipe(name)``: ``recipes/NAME/run.py`` as a module (recipes are scripts, not a
    package), imported afresh for each test."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_run_under_test",
                                                      ROOT / "recipes" / name / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    return load


FSDD = ROOT / "data" / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def fsdd() -> Path:
    """The bundled FSDD recordings, ``<digit>_<speaker>_<take>.wav`` at 8 kHz (tests' real clips)."""
    return FSDD


def copy_fsdd(out: Path, speakers: tuple[str, ...], digits: tuple[str, ...], takes: int) -> Path:
    """A small FSDD-style dataset of real clips in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for speaker in speakers:
        for digit in digits:
            for take in range(takes):
                name = f"{digit}_{speaker}_{take}.wav"
                (out / name).write_bytes((FSDD / name).read_bytes())
    return out


@pytest.fixture
def real_clip(fsdd: Path):
    """One bundled recording (a "7" by jackson), resampled to 16 kHz: a [time] float tensor."""
    from speechxfer.audio import load

    return load(fsdd / "7_jackson_32.wav")


@pytest.fixture(scope="session")
def make_fsdd():
    return copy_fsdd


def save_svm(folder: Path, digits: tuple[str, ...], takes: range, speaker: str = "jackson") -> Path:
    """A classic MFCC+SVM model trained in a second on real clips and saved in ``folder``: enough
    to drive every command that needs a model folder."""
    from speechxfer.audio import load
    from speechxfer.classic import build_classic

    waves = [load(FSDD / f"{d}_{speaker}_{take}.wav") for d in digits for take in takes]
    build_classic("svm").fit(waves, [d for d in digits for _ in takes]).save(folder)
    return folder


@pytest.fixture(scope="session")
def make_svm():
    return save_svm


@pytest.fixture
def small_fsdd(tmp_path: Path) -> Path:
    """Three speakers, three digits, four takes each: a few-second dataset of real clips."""
    return copy_fsdd(tmp_path / "fsdd", ("jackson", "george", "theo"), ("1", "4", "7"), 4)
