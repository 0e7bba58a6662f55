"""Metric functions on hand-made accuracy matrices with hand-computed answers."""

import pytest
import torch

from taskshare.errors import TaskshareError
from taskshare.results.metrics import (
    accuracy,
    average_accuracy,
    average_accuracy_curve,
    backward_transfer,
    delta_m,
    forgetting,
    forward_transfer,
    validate_matrix,
)

# Lower-triangular 3x3 matrix (None = task not seen yet).
#            task0  task1  task2
# after t0 [ 0.9,   None,  None ]
# after t1 [ 0.7,   0.8,   None ]
# after t2 [ 0.6,   0.75,  0.9  ]
R3 = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.75, 0.9]]
# ACC  = (0.6 + 0.75 + 0.9) / 3                      = 0.75
# BWT  = ((0.6 - 0.9) + (0.75 - 0.8)) / 2 = (-0.3 - 0.05) / 2 = -0.175
# F    = j=0: max(0.9, 0.7) - 0.6 = 0.3 ; j=1: max(0.8) - 0.75 = 0.05 ; (0.3 + 0.05) / 2 = 0.175
# curve= [0.9, (0.7+0.8)/2 = 0.75, 0.75]

# Full 3x3 matrix (unseen tasks evaluated too), for FWT.
#            task0  task1  task2
# after t0 [ 0.9,   0.3,   0.2 ]
# after t1 [ 0.7,   0.8,   0.4 ]
# after t2 [ 0.6,   0.75,  0.9 ]
R3_FULL = [[0.9, 0.3, 0.2], [0.7, 0.8, 0.4], [0.6, 0.75, 0.9]]
BASE = [0.1, 0.1, 0.25]
# FWT = ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.3 - 0.1) + (0.4 - 0.25)) / 2 = (0.2 + 0.15) / 2 = 0.175


def test_average_accuracy():
    assert average_accuracy(R3) == pytest.approx(0.75)
    assert average_accuracy([[0.42]]) == pytest.approx(0.42)


def test_backward_transfer():
    assert backward_transfer(R3) == pytest.approx(-0.175)
    assert backward_transfer([[0.5]]) is None
    # No forgetting at all -> 0; improvement on old tasks -> positive.
    assert backward_transfer([[0.5, None], [0.7, 0.6]]) == pytest.approx(0.2)


def test_forgetting():
    assert forgetting(R3) == pytest.approx(0.175)
    assert forgetting([[0.5]]) is None
    # Max is over l in [j, T-2]: task 0 peaked after t1 (0.95), final 0.85 -> 0.1;
    # task 1 only seen at l=1: 0.6 - 0.7 = -0.1 (it improved). Mean = 0.0
    R = [[0.8, None, None], [0.95, 0.6, None], [0.85, 0.7, 0.9]]
    assert forgetting(R) == pytest.approx(0.0)


def test_forgetting_ignores_values_before_task_was_trained():
    # R[0][1] = 0.99 (task 1 evaluated before training it) must not count as the "best" accuracy.
    R = [[0.9, 0.99], [0.9, 0.5]]
    assert forgetting(R) == pytest.approx(0.0)


def test_forward_transfer():
    assert forward_transfer(R3_FULL, BASE) == pytest.approx(0.175)
    # Metrics that ignore the upper triangle are the same for full and triangular matrices.
    assert average_accuracy(R3_FULL) == average_accuracy(R3)
    assert backward_transfer(R3_FULL) == pytest.approx(backward_transfer(R3))


def test_forward_transfer_undefined_is_none():
    assert forward_transfer(R3, BASE) is None  # unseen tasks not evaluated
    assert forward_transfer(R3_FULL, None) is None  # no random-init baseline
    assert forward_transfer(R3_FULL, [None, 0.1, None]) is None
    assert forward_transfer([[0.5]], [0.1]) is None  # T == 1


def test_forward_transfer_baseline_length():
    with pytest.raises(TaskshareError, match=r"baseline has 2 entries but the accuracy matrix has 3 tasks"):
        forward_transfer(R3_FULL, [0.1, 0.1])


def test_average_accuracy_curve():
    assert average_accuracy_curve(R3) == pytest.approx([0.9, 0.75, 0.75])
    assert average_accuracy_curve(R3_FULL) == pytest.approx([0.9, 0.75, 0.75])  # ignores j > i
    assert average_accuracy_curve([[0.3]]) == pytest.approx([0.3])


def test_validate_matrix_ok():
    assert validate_matrix(R3) == R3
    assert validate_matrix(((1, None), (0, 1))) == [[1.0, None], [0.0, 1.0]]


@pytest.mark.parametrize(
    "R, msg",
    [
        ([], r"accuracy matrix is empty"),
        ([[0.5, None]], r"not square: row 0 has 2 entries, expected 1"),
        ([[0.5, None], [0.5]], r"not square: row 1 has 1 entries, expected 2"),
        ([[0.5, None], [None, 0.5]], r"None at \[1\]\[0\] on/below the diagonal"),
        ([[None]], r"None at \[0\]\[0\]"),
        ([[81.0]], r"value 81.0 at \[0\]\[0\] is not a fraction in \[0, 1\]"),
        ([[-0.1]], r"is not a fraction"),
        ([[float("nan")]], r"is not a fraction"),
        ([["0.5"]], r"is not a fraction"),
        (5, r"not a list of lists"),
    ],
)
def test_validate_matrix_errors(R, msg):
    with pytest.raises(TaskshareError, match=msg) as e:
        validate_matrix(R)
    assert "\n" not in str(e.value)


def test_metrics_validate_input():
    with pytest.raises(TaskshareError, match="not square"):
        average_accuracy([[0.5, 0.5]])
    with pytest.raises(TaskshareError, match="on/below the diagonal"):
        backward_transfer([[0.5, None], [0.5, None]])


# ------------------------------------------------------------------ delta_m

HIB = {"seg": {"miou": True, "pix_acc": True}, "depth": {"abs_err": False}}
BASELINE = {"seg": {"miou": 0.5, "pix_acc": 0.8}, "depth": {"abs_err": 0.4}}


def test_delta_m_known_value():
    mt = {"seg": {"miou": 0.55, "pix_acc": 0.76}, "depth": {"abs_err": 0.3}}
    # seg:   ((0.55-0.5)/0.5 + (0.76-0.8)/0.8) / 2 = (0.1 - 0.05) / 2 = 0.025
    # depth: -(0.3-0.4)/0.4 = +0.25       (lower is better and it decreased -> positive)
    # Δm = 100 * (0.025 + 0.25) / 2 = 13.75
    assert delta_m(mt, BASELINE, HIB) == pytest.approx(13.75)


def test_delta_m_signs():
    hib = {"d": {"err": False}}
    assert delta_m({"d": {"err": 0.5}}, {"d": {"err": 1.0}}, hib) == pytest.approx(50.0)  # lower err: better
    assert delta_m({"d": {"err": 1.5}}, {"d": {"err": 1.0}}, hib) == pytest.approx(-50.0)
    assert delta_m({"c": {"acc": 0.9}}, {"c": {"acc": 0.6}}, {"c": {"acc": True}}) == pytest.approx(50.0)
    assert delta_m(BASELINE, BASELINE, HIB) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "mt, base, hib, msg",
    [
        ({"seg": {"miou": 0.5, "pix_acc": 0.8}}, BASELINE, HIB, r"missing key 'depth' in task_metrics"),
        ({**BASELINE, "normal": {"mean": 1.0}}, BASELINE, HIB, r"missing key 'normal' in baseline_metrics"),
        (BASELINE, BASELINE, {"seg": HIB["seg"]}, r"missing key 'depth' in higher_is_better"),
        (BASELINE, {**BASELINE, "seg": {"miou": 0.5}}, HIB, r"missing key 'pix_acc' in baseline_metrics\['seg'\]"),
        ({**BASELINE, "depth": {}}, BASELINE, HIB, r"task_metrics\['depth'\] is empty"),
        ({}, BASELINE, HIB, r"task_metrics is empty"),
        (BASELINE, {**BASELINE, "depth": {"abs_err": 0}}, HIB, r"baseline for depth.abs_err is 0"),
    ],
)
def test_delta_m_errors(mt, base, hib, msg):
    with pytest.raises(TaskshareError, match=msg) as e:
        delta_m(mt, base, hib)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ accuracy

def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 2])
    acc = accuracy(logits, targets)
    assert isinstance(acc, float)
    assert acc == pytest.approx(0.5)
    assert accuracy(logits, logits.argmax(1)) == 1.0


def test_accuracy_errors():
    with pytest.raises(TaskshareError, match=r"logits shape \(4, 3\) does not match targets shape \(3,\)"):
        accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TaskshareError, match="empty targets"):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
