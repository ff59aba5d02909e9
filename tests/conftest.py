from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "data" / "fsdd" / "recordings"


@pytest.fixture
def fsdd() -> Path:
    return FSDD


@pytest.fixture
def small_fsdd(tmp_path: Path) -> Path:
    """Two speakers, three digits, four takes each: a few-second dataset of real clips."""
    out = tmp_path / "fsdd"
    out.mkdir()
    for speaker in ("jackson", "george", "theo"):
        for digit in ("1", "4", "7"):
            for take in range(4):
                name = f"{digit}_{speaker}_{take}.wav"
                (out / name).write_bytes((FSDD / name).read_bytes())
    return out
