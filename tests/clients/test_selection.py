"""The intersection, RFC 5905 section 11.2.1, by hand."""

from __future__ import annotations

import pytest

from timeservice.programs import skew as skew_program
from timeservice.skew import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Failure,
    Reading,
    Target,
    intersection,
    judge,
)


@pytest.mark.parametrize(
    "intervals, expected",
    [
        # One target: its own interval.
        ([(-1, 1)], (-1, 1)),
        # Two that overlap: what they share.
        ([(-1, 1), (0, 2)], (0, 1)),
        # Two that do not: no majority of two.
        ([(0, 1), (2, 3)], None),
        # Two that touch at one point: that point.
        ([(0, 1), (1, 2)], (1, 1)),
        # Two that overlap a little agree (2.0.0's midpoint rule: no majority).
        ([(-1, 1), (0.7, 1.1)], (0.7, 1)),
        # Three, one far off: f = 0 fails (no point is in all three); with
        # f = 1 the scans stop at 0 (two lows) and 1 (two highs).
        ([(-1, 1), (0, 2), (10, 12)], (0, 1)),
        # Nested: all three share [0.5, 0.6].
        ([(-10, 10), (-1, 1), (0.5, 0.6)], (0.5, 0.6)),
        # Two against two: no majority.
        ([(0, 1), (0.5, 1.5), (10, 11), (10.5, 11.5)], None),
        # Three against two: with f = 2 the scans stop at 1 and 2.
        ([(0, 2), (0.5, 2.5), (1, 3), (10, 11), (10.5, 11.5)], (1, 2)),
        # The same with narrower three: [0.8, 1] is shared by three (RFC
        # 5905's midpoints would have made it no majority).
        ([(0, 1), (0.5, 1.5), (0.8, 2), (10, 11), (10.5, 11.5)], (0.8, 1)),
        # Ties: the same interval three times.
        ([(0, 1), (0, 1), (0, 1)], (0, 1)),
        # Three sharing one point: that point.
        ([(-1, 0), (0, 1), (-2, 2)], (0, 0)),
    ],
)
def test_the_intersection_by_hand(intervals, expected):
    assert intersection(intervals) == expected


def reading(name: str, offset: float, bound: float = 0.001) -> Reading:
    return Reading(Target(name, "line", name, 8037), offset, bound, bound * 2)


def test_a_falseticker_is_named_and_spoils_nothing_else():
    readings = [
        reading("a", 0.0),
        reading("b", 0.003),
        reading("c", -0.002),
        reading("d", 5.0),
    ]
    verdict = judge(readings, warning=0.1, critical=1.0)
    assert [r.target.text for r in verdict.false] == ["d"]
    # Each interval is at least +-10 ms wide (the tolerance): [-0.01, 0.01],
    # [-0.007, 0.013], [-0.012, 0.008] share [-0.007, 0.008], and all three
    # d's [4.99, 5.01] misses it.
    assert verdict.majority == pytest.approx((-0.007, 0.008))
    assert verdict.distance == 0  # zero is inside it
    assert verdict.skew == pytest.approx(5.002 - 0.002)  # c to d, less both bounds
    assert verdict.status == CRITICAL
    assert verdict.summary.startswith("d is at least 5.000000 s ahead of c;")
    assert "falseticker d" in verdict.summary
    without = judge(readings[:3], warning=0.1, critical=1.0)
    assert without.status == OK and without.false == ()
    assert without.skew == pytest.approx(0.005 - 0.002)


def test_the_thresholds():
    # 0.5 s apart, bounds of 1 ms: with a tolerance of 1 s they agree,
    # and they are at least 0.498 s apart.
    two = [reading("a", 0.0), reading("b", 0.5)]
    assert judge(two, 0.6, 1.0, tolerance=1.0).status == OK
    assert judge(two, 0.4, 1.0, tolerance=1.0).status == WARNING
    assert judge(two, 0.1, 0.4, tolerance=1.0).status == CRITICAL
    assert judge(two, 0.1, 0.4, tolerance=1.0).skew == pytest.approx(0.498)
    # Bounds wider than the skew prove nothing: no alarm.
    vague = [reading("a", 0.0, 0.6), reading("b", 0.5, 0.6)]
    assert judge(vague, 0.1, 0.4).skew == 0
    assert judge(vague, 0.1, 0.4).status == OK
    # Agreeing among themselves, but far from this clock: [1.991, 2.01].
    far = [reading("a", 2.0), reading("b", 2.001)]
    verdict = judge(far, warning=0.1, critical=1.0)
    assert verdict.status == CRITICAL
    assert verdict.distance == pytest.approx(1.991)
    assert "this clock is at least 1.991000 s off the majority" in verdict.summary


def test_two_targets_whose_bounds_overlap_agree():
    # [-0.3, 0.3] and [0.2, 0.8] overlap: both clocks may be in [0.2, 0.3]
    # (2.0.0, after RFC 5905's midpoints: "the 2 answers do not agree; no
    # skew beyond the bounds", which says one thing and its opposite).
    verdict = judge([reading("a", 0.0, 0.3), reading("b", 0.5, 0.3)], 1, 2)
    assert verdict.majority == pytest.approx((0.2, 0.3))
    assert verdict.false == () and verdict.status == OK
    # The tolerance widens narrow bounds: 5 ms apart agree at 10 ms, not at 1 ms.
    close = [reading("a", 0.0, 0.0001), reading("b", 0.005, 0.0001)]
    assert judge(close, 1, 2).majority == pytest.approx((-0.005, 0.01))
    assert judge(close, 1, 2, tolerance=0.001).status == UNKNOWN


def test_nothing_answered_is_unknown():
    down = Failure(Target("a", "line", "a", 1), "unreachable", "connection refused")
    assert judge([down], 0.1, 1.0).status == UNKNOWN
    assert judge([], 0.1, 1.0).status == UNKNOWN


def test_without_a_majority_the_status_follows_the_skew_proven():
    # Which of two is wrong cannot be told; that they are apart can.
    split = [reading("a", 0.0), reading("b", 1.0)]
    verdict = judge(split, 0.1, 1.0)
    assert verdict.status == WARNING
    assert verdict.summary.startswith("no majority: the 2 answers do not agree; ")
    assert "b is at least 0.99" in verdict.summary
    assert verdict.skew == pytest.approx(1.0, abs=0.01)
    far = judge([reading("a", 0.0), reading("b", 10.0)], 0.1, 1.0)
    assert far.status == CRITICAL and far.skew == pytest.approx(10.0, abs=0.01)
    assert "skew=9.99" in skew_program.status_line(far, 0.1, 1.0)


def test_one_target_agrees_with_itself():
    verdict = judge([reading("a", 0.25)], 0.1, 1.0)
    assert verdict.majority == pytest.approx((0.24, 0.26))
    assert verdict.skew == 0.0
    assert verdict.status == WARNING  # this clock is at least 0.24 s from it
    assert (
        "largest skew among those that agree: none (one target)"
        in skew_program.report(verdict)
    )


def test_an_unreachable_target_is_reported_and_makes_a_warning():
    down = Failure(Target("x", "ntp", "x", 123), "unreachable", "no answer within 1 s")
    results = [reading("a", 0.0), down, reading("b", 0.001)]
    verdict = judge(results, 0.1, 1.0)
    assert verdict.status == WARNING  # 2.0.0: OK, over a target never reached
    assert verdict.summary.endswith("1 without a reading; not reached: x")
    assert judge(results, 0.1, 1.0, ignore_unreachable=True).status == OK
    refused = Failure(Target("y", "ntp", "y", 123), "refused", "a Kiss-o'-Death")
    assert judge([reading("a", 0.0), refused], 0.1, 1.0).status == OK  # reached
    rows = skew_program.report(verdict)
    assert rows[2].split() == [
        "x",
        "ntp",
        "-",
        "-",
        "-",
        "unreachable",
        "(no",
        "answer",
        "within",
        "1",
        "s)",
    ]
