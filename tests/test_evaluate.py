"""Report figures (speechxfer.evaluate)."""

import numpy as np
import pytest

from speechxfer.evaluate import score, score_predictions


def test_macro_f1_leaves_out_a_label_the_data_lacks_and_nobody_chose():
    """Every clip right on data holding two of a model's three labels: macro-F1 1, not 2/3."""
    report = score(["0", "1", "2"], ["0", "0", "1"], np.eye(3)[[0, 0, 1]])
    assert report["accuracy"] == 1.0
    assert report["macro_f1"] == pytest.approx(1.0)
    assert report["per_class"]["2"]["support"] == 0  # still listed, with the confusion row
    # a label predicted but absent from the truth is an error, and counts
    wrong = score_predictions(["0", "1", "2"], ["0", "1"], ["0", "2"])
    assert wrong["macro_f1"] == pytest.approx((1 + 0 + 0) / 3)
