import numpy as np
import pytest

from speechxfer.openset import (
    DEFAULT_MAX_FALSE_ACCEPT,
    calibrate_threshold,
    decide,
    open_set_metrics,
)
from speechxfer.vocab import SILENCE, UNKNOWN

LABELS = ["go", "stop", UNKNOWN, SILENCE]


def synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Softmax outputs of a noisy model: the true class gets a boost, non-commands less so."""
    rng = np.random.default_rng(seed)
    truth = list(rng.choice(LABELS, n, p=[0.3, 0.3, 0.25, 0.15]))
    logits = rng.normal(size=(n, len(LABELS)))
    for row, t in enumerate(truth):
        logits[row, LABELS.index(t)] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return truth, probs


def false_accept(truth, predicted) -> float:
    rejected = [p for t, p in zip(truth, predicted) if t in (UNKNOWN, SILENCE)]
    return np.mean([p not in (UNKNOWN, SILENCE) for p in rejected])


@pytest.mark.parametrize("target", [0.0, 0.01, DEFAULT_MAX_FALSE_ACCEPT, 0.2])
def test_calibrated_threshold_meets_the_target_and_is_the_lowest(target):
    truth, probs = synthetic(2000, seed=0)
    t = calibrate_threshold(LABELS, truth, probs, target)
    assert false_accept(truth, decide(LABELS, probs, t)) <= target
    below = np.nextafter(t, -np.inf)
    assert false_accept(truth, decide(LABELS, probs, below)) > target
    # the same threshold generalises roughly to fresh clips of the same kind
    fresh_truth, fresh = synthetic(4000, seed=1)
    assert false_accept(fresh_truth, decide(LABELS, fresh, t)) <= target + 0.03


def test_calibration_needs_non_command_clips():
    with pytest.raises(ValueError, match="no _unknown_"):
        calibrate_threshold(LABELS, ["go"], np.array([[0.7, 0.1, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="max_false_accept"):
        calibrate_threshold(LABELS, [UNKNOWN], np.array([[0.7, 0.1, 0.1, 0.1]]), 1.5)
    assert calibrate_threshold(LABELS, [UNKNOWN], np.array([[0.7, 0.1, 0.1, 0.1]]), 1.0) == 0.0


def test_decision_rule():
    probs = np.array([
        [0.60, 0.10, 0.20, 0.10],  # command above threshold
        [0.40, 0.10, 0.45, 0.05],  # command below: unknown beats silence
        [0.30, 0.10, 0.20, 0.40],  # command below: silence beats unknown
        [0.30, 0.50, 0.10, 0.10],  # the best command, not the first
    ])
    assert decide(LABELS, probs, 0.5) == ["go", UNKNOWN, SILENCE, "stop"]
    # a low bar still rejects a clip that _unknown_ or _silence_ outscores every command on
    assert decide(LABELS, probs, 0.2) == ["go", UNKNOWN, SILENCE, "stop"]
    assert decide(LABELS, probs, 0.0) == ["go", "go", "go", "stop"]  # 0 never rejects
    # a decoder scores only the commands: a rejected clip is unknown
    assert decide(["go", "stop"], np.array([[0.4, 0.35], [0.9, 0.1]]), 0.5) == [UNKNOWN, "go"]
    with pytest.raises(ValueError, match="do not match"):
        decide(LABELS, probs[:, :3], 0.5)


def test_metrics_on_a_hand_made_case():
    truth = ["go", "go", "stop", "stop", UNKNOWN, UNKNOWN, SILENCE, SILENCE]
    probs = np.array([
        [0.9, 0.0, 0.1, 0.0],  # go -> go
        [0.3, 0.1, 0.6, 0.0],  # go -> rejected (unknown)
        [0.1, 0.8, 0.1, 0.0],  # stop -> stop
        [0.7, 0.2, 0.1, 0.0],  # stop -> go (wrong command)
        [0.6, 0.0, 0.4, 0.0],  # unknown -> go (false accept)
        [0.2, 0.1, 0.7, 0.0],  # unknown -> unknown
        [0.1, 0.0, 0.1, 0.8],  # silence -> silence
        [0.2, 0.0, 0.3, 0.5],  # silence -> silence
    ])
    m = open_set_metrics(LABELS, truth, probs, threshold=0.5)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)
    assert m["open_set"] == {"command_recall": 0.5, "unknown_false_accept": 0.5,
                             "silence_false_accept": 0.0}
    # macro-F1 by hand: go P=1/3 R=1/2, stop P=1 R=1/2, unknown P=1/2 R=1/2, silence 1
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 3, 1 / 2), (1, 1 / 2), (1 / 2, 1 / 2), (1, 1))]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["threshold"] == 0.5
    # no silence clips in the truth: that rate is undefined, not zero
    no_silence = open_set_metrics(LABELS, truth[:6], probs[:6], 0.5)["open_set"]
    assert no_silence["silence_false_accept"] is None


def test_decoder_without_rejection_columns_is_scored_with_unknown():
    truth = ["go", UNKNOWN]
    m = open_set_metrics(["go", "stop"], truth, np.array([[0.8, 0.2], [0.55, 0.45]]), 0.6)
    assert m["accuracy"] == 1.0 and UNKNOWN in m["labels"]
    assert m["open_set"]["unknown_false_accept"] == 0.0
