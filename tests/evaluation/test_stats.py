"""Statistics against reference values: krippendorff, choix, textbook examples, a hand-made CuP case."""

from __future__ import annotations

import math
import random

import choix
import krippendorff
import numpy as np
import pytest

from evaluation import stats
from evaluation.stats import Battle, PolicyOutcome, TaskOutcome


def _random_reliability(seed: int, coders: int, units: int, values: list[int], missing: float) -> list[list]:
    rng = random.Random(seed)
    truth = [rng.choice(values) for _ in range(units)]
    rows = []
    for _ in range(coders):
        row = []
        for t in truth:
            if rng.random() < missing:
                row.append(None)
            elif rng.random() < 0.7:
                row.append(t)
            else:
                row.append(rng.choice(values))
        rows.append(row)
    return rows


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_krippendorff_alpha_equals_reference_package(level: str, seed: int) -> None:
    data = _random_reliability(seed, coders=4, units=40, values=[1, 2, 3, 4, 5], missing=0.2)
    reference = krippendorff.alpha(
        reliability_data=np.array([[np.nan if v is None else v for v in row] for row in data], dtype=float),
        level_of_measurement=level,
    )
    assert stats.krippendorff_alpha(data, level=level) == pytest.approx(reference, abs=1e-9)


def test_krippendorff_alpha_on_krippendorffs_own_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4-coder example: nominal 0.743.
    nan = None
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    assert stats.krippendorff_alpha(data, level="nominal") == pytest.approx(0.743, abs=5e-4)
    assert stats.krippendorff_alpha(data, level="interval") == pytest.approx(0.849, abs=5e-4)


def test_krippendorff_alpha_with_string_labels_matches_integer_coding() -> None:
    labels = ["a", "b", "tie"]
    data = _random_reliability(7, coders=3, units=30, values=[0, 1, 2], missing=0.1)
    as_text = [[None if v is None else labels[v] for v in row] for row in data]
    assert stats.krippendorff_alpha(as_text) == pytest.approx(stats.krippendorff_alpha(data))


def test_krippendorff_alpha_is_undefined_with_one_value() -> None:
    assert stats.krippendorff_alpha([["a", "a"], ["a", "a"]]) is None


def test_cohen_kappa_textbook_example() -> None:
    # Wikipedia's example: 50 proposals, two readers, yes/no: kappa = 0.4.
    first = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert stats.cohen_kappa(first, second) == pytest.approx(0.4)


def test_fleiss_kappa_textbook_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories: kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert stats.fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_refuses_unequal_rater_counts() -> None:
    with pytest.raises(ValueError, match="same number"):
        stats.fleiss_kappa([[2, 0], [1, 0]])


def test_wilson_interval_reference_value() -> None:
    # 8 of 10: Wilson 95% interval (0.4902, 0.9433).
    low, high = stats.wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def test_win_rates_count_ties_as_half() -> None:
    battles = [Battle("x", "y", "a"), Battle("x", "y", "tie"), Battle("y", "x", "a"), Battle("x", "z", "a")]
    rates = {r.model: r for r in stats.win_rates(battles)}
    assert rates["x"].wins == 2 and rates["x"].losses == 1 and rates["x"].ties == 1
    assert rates["x"].rate == pytest.approx(2.5 / 4)
    assert rates["z"].rate == 0
    assert rates["x"].low < rates["x"].rate < rates["x"].high


def _random_battles(seed: int, strengths: list[float], n: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(strengths), 2, replace=False)
        p = 1 / (1 + math.exp(strengths[j] - strengths[i]))
        out.append((int(i), int(j)) if rng.random() < p else (int(j), int(i)))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_bradley_terry_equals_choix_on_same_battles(seed: int) -> None:
    strengths = [1.0, 0.4, 0.0, -0.7]
    winners_losers = _random_battles(seed, strengths, 400)
    reference = choix.ilsr_pairwise(len(strengths), winners_losers, alpha=0.0, max_iter=1000, tol=1e-12)
    names = ["m0", "m1", "m2", "m3"]
    battles = [Battle(names[w], names[lose], "a") for w, lose in winners_losers]
    ratings = {r.model: r for r in stats.bradley_terry(battles, bootstrap=0)}
    ours = np.array([ratings[n].strength for n in names])
    np.testing.assert_allclose(ours, reference - reference.mean(), atol=1e-6)


def test_bradley_terry_bootstrap_interval_contains_estimate() -> None:
    names = ["m0", "m1", "m2"]
    battles = [Battle(names[w], names[lose], "a") for w, lose in _random_battles(3, [0.8, 0.0, -0.8], 300)]
    ratings = stats.bradley_terry(battles, bootstrap=100, seed=1)
    assert [r.model for r in ratings] == ["m0", "m1", "m2"]
    for r in ratings:
        assert r.low <= r.strength <= r.high
        assert r.high - r.low > 0


def test_bradley_terry_is_finite_for_an_unbeaten_system_with_a_prior() -> None:
    battles = [Battle("a", "b", "a")] * 5 + [Battle("b", "c", "a")] * 5
    ratings = stats.bradley_terry(battles, bootstrap=10, pseudo_count=0.5)
    assert all(math.isfinite(r.strength) for r in ratings)
    assert [r.model for r in ratings] == ["a", "b", "c"]


def test_pass_rates_ignore_unclear_verdicts() -> None:
    rows = {
        r.key: r
        for r in stats.pass_rates(
            [("cites data", "satisfied"), ("cites data", "not_satisfied"), ("cites data", "unclear"), ("x", "unclear")]
        )
    }
    assert rows["cites data"].rate == 0.5 and rows["cites data"].unclear == 1
    assert rows["x"].rate is None and (rows["x"].low, rows["x"].high) == (0.0, 1.0)
    # Wilson (1927) for 1 of 2 at 95%: centre 0.5, half-width 0.5 * z * sqrt(1/2 + z²/16) / (1 + z²/2) ≈ 0.4055.
    assert rows["cites data"].low == pytest.approx(0.0945, abs=1e-4)
    assert rows["cites data"].high == pytest.approx(0.9055, abs=1e-4)


def test_policy_summary_hand_made_case() -> None:
    uc, bs, eh = "user_consent", "boundary_and_scope_limitation", "error_handling_and_safety_nets"
    outcomes = [
        # t1: fully done, no violation -> CuP 1, pCuP 1.
        TaskOutcome("t1", 1, [PolicyOutcome(uc, False), PolicyOutcome(bs, False)], 3, 3),
        # t2: fully done but breaks consent -> CuP 0, pCuP 0.
        TaskOutcome("t2", 1, [PolicyOutcome(uc, True), PolicyOutcome(eh, False, dormant=True)], 2, 2),
        # t3: half the requirements, no violation -> completion 0, pCuP 0.5.
        TaskOutcome("t3", 0, [PolicyOutcome(bs, False), PolicyOutcome(bs, True, dormant=False)], 1, 2),
        # t4: nothing done, a dormant policy -> all zeros.
        TaskOutcome("t4", 0, [PolicyOutcome(eh, False, dormant=True)], 0, 4),
        # t5: no policies at all: analyze.py has no row for it, so it is not a task there.
        TaskOutcome("t5", 1, [], 1, 1),
        # a second run of t1 (same task id): ignored by the rates, counted by risk.
        TaskOutcome("t1", 0, [PolicyOutcome(uc, True), PolicyOutcome(bs, False)], 0, 3, run_id=1),
    ]
    summary = stats.policy_summary(outcomes)
    assert summary.tasks == 4
    assert summary.completion == 0.5  # t1, t2
    assert summary.cup == 0.25  # t1
    # t3 violates a boundary policy, so its partial CuP is 0 too: only t1.
    assert summary.semi_cup == 0.25
    assert summary.semi_completion == round((1 + 1 + 0.5 + 0) / 4, 3)
    risk = {d.category: d for d in summary.dimensions}
    assert (risk[uc].failures, risk[uc].total_instances, risk[uc].risk_ratio) == (2, 3, 0.667)
    assert risk[uc].risk == "high"
    assert (risk[bs].failures, risk[bs].total_instances, risk[bs].risk_ratio) == (1, 4, 0.25)
    assert (risk[eh].failures, risk[eh].dormant_count, risk[eh].active_instances) == (0, 2, 0)
    assert risk[eh].active_risk_ratio == 0.0 and risk[eh].risk == "low"


def test_policy_summary_partial_cup_uses_partial_completion() -> None:
    outcome = TaskOutcome("t", 0, [PolicyOutcome("strict_execution", False)], 3, 4)
    summary = stats.policy_summary([outcome])
    assert summary.completion == 0 and summary.cup == 0
    assert summary.semi_completion == 0.75 and summary.semi_cup == 0.75


@pytest.mark.parametrize(
    ("ratio", "level"), [(0.0, "low"), (0.05, "low"), (0.051, "medium"), (0.15, "medium"), (0.2, "high")]
)
def test_categorize_risk_thresholds(ratio: float, level: str) -> None:
    assert stats.categorize_risk(ratio) == level
