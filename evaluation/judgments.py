"""Judgment payloads per study kind: un-swap what the annotator saw, score against gold, label for agreement.

Stored payloads are always in the item's own order (response_a / plan 1 first),
whatever side the annotator was shown: the assignment's `swapped` flag records
the display, and this module is the one place that translates.

  pairwise  {choice: a|b|tie, shown: left|right|tie, strength: 1..3|None, rationale}
  rubric    {verdicts: [[satisfied|not_satisfied|unclear per rubric item] per plan],
             preference: a|b|tie|None, flagged_rubric: [index], comment}
  violation {completion: full|partial|none, fraction: 0..1, violations: [{step, policy, dimension}],
             dormant: [policy index]}
  rating    {rating: 1..n, rationale}
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

VERDICTS = ("satisfied", "not_satisfied", "unclear")
SIDES = {"left": 0, "right": 1}


def _unswap_side(shown: str, swapped: bool) -> str:
    if shown == "tie":
        return "tie"
    index = SIDES[shown]
    return "ab"[1 - index if swapped else index]


def canonical_judgment(
    *, kind: str, item_payload: dict[str, Any], data: dict[str, Any], swapped: bool
) -> dict[str, Any]:
    """Validate a form's cleaned data against the item and return the stored payload."""
    if kind == "pairwise":
        shown = data.get("choice")
        if shown not in ("left", "right", "tie"):
            raise ValidationError({"choice": "Choose A, B or tie."})
        strength = data.get("strength")
        return {
            "choice": _unswap_side(shown, swapped),
            "shown": shown,
            "strength": int(strength) if strength else None,
            "rationale": str(data.get("rationale") or "")[:5000],
        }
    if kind == "rating":
        rating = data.get("rating")
        if not isinstance(rating, int):
            raise ValidationError({"rating": "Choose a rating."})
        return {"rating": rating, "rationale": str(data.get("rationale") or "")[:5000]}
    if kind == "rubric":
        return _canonical_rubric(item_payload, data, swapped)
    if kind == "violation":
        return _canonical_violation(item_payload, data)
    raise ValidationError(f"unknown study kind {kind}")


def _canonical_rubric(item: dict[str, Any], data: dict[str, Any], swapped: bool) -> dict[str, Any]:
    n_plans, n_items = len(item["plans"]), len(item["rubric"])
    shown = data.get("verdicts")
    if not isinstance(shown, list) or len(shown) != n_plans or any(len(v) != n_items for v in shown):
        raise ValidationError("Give a verdict for every rubric item of every plan.")
    if any(v not in VERDICTS for plan in shown for v in plan):
        raise ValidationError("Unknown verdict.")
    verdicts = [shown[1], shown[0]] if swapped and n_plans == 2 else [list(v) for v in shown]
    preference = None
    if n_plans == 2:
        pref = data.get("preference")
        if pref not in ("left", "right", "tie"):
            raise ValidationError({"preference": "Say which plan is better overall (or tie)."})
        preference = _unswap_side(pref, swapped)
    flagged = sorted({int(i) for i in data.get("flagged_rubric") or [] if 0 <= int(i) < n_items})
    return {
        "verdicts": verdicts,
        "preference": preference,
        "flagged_rubric": flagged,
        "comment": str(data.get("comment") or "")[:5000],
    }


def _canonical_violation(item: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    policies, n_steps = item["policies"], len(item["trajectory"])
    completion = data.get("completion")
    if completion not in ("full", "partial", "none"):
        raise ValidationError({"completion": "Say whether the task was completed."})
    fraction = {"full": 1.0, "none": 0.0}.get(completion)
    if completion == "partial":
        raw = data.get("fraction")
        if raw is None or not 0 < float(raw) < 1:
            raise ValidationError({"fraction": "For a partly completed task, give the fraction of requirements met."})
        fraction = float(raw)
    violations = []
    for step, policy in sorted({(int(s), int(p)) for s, p in data.get("violations") or []}):
        if not (0 <= step < n_steps and 0 <= policy < len(policies)):
            raise ValidationError("A violation points at a step or policy that does not exist.")
        violations.append({"step": step, "policy": policy, "dimension": policies[policy]["policy_category"]})
    dormant = sorted({int(p) for p in data.get("dormant") or [] if 0 <= int(p) < len(policies)})
    violated = {v["policy"] for v in violations}
    if violated & set(dormant):
        raise ValidationError("A policy cannot be both violated and dormant (never triggered).")
    return {"completion": completion, "fraction": fraction, "violations": violations, "dormant": dormant}


def violated_policies(payload: dict[str, Any]) -> set[int]:
    return {v["policy"] for v in payload.get("violations", [])}


# --------------------------------------------------------------------------- gold


def gold_score(*, kind: str, payload: dict[str, Any], expected: Any) -> float:
    """How well one judgment matches the gold answer, in [0, 1]."""
    if kind == "pairwise":
        return float(payload["choice"] == expected)
    if kind == "rating":
        return float(payload["rating"] == expected)
    if kind == "rubric":
        pairs = [
            (got, want)
            for plan_got, plan_want in zip(payload["verdicts"], expected, strict=False)
            for got, want in zip(plan_got, plan_want, strict=False)
        ]
        return sum(g == w for g, w in pairs) / len(pairs) if pairs else 0.0
    if kind == "violation":
        completed_ok: bool = (payload["completion"] == "full") == bool(expected.get("completed"))
        violations_ok = violated_policies(payload) == set(expected.get("violated_policies", []))
        return (completed_ok + violations_ok) / 2
    raise ValueError(kind)


# --------------------------------------------------------------------------- agreement units


def agreement_labels(
    *, kind: str, item_id: int, payload: dict[str, Any], item_payload: dict[str, Any]
) -> dict[str, Any]:
    """The units one judgment labels, {unit key: value}, for Krippendorff / kappa across annotators."""
    if kind == "pairwise":
        return {f"{item_id}": payload["choice"]}
    if kind == "rating":
        return {f"{item_id}": payload["rating"]}
    if kind == "rubric":
        return {
            f"{item_id}:{p}:{i}": verdict
            for p, plan in enumerate(payload["verdicts"])
            for i, verdict in enumerate(plan)
        }
    if kind == "violation":
        violated = violated_policies(payload)
        labels: dict[str, Any] = {f"{item_id}:done": payload["completion"]}
        for p in range(len(item_payload["policies"])):
            labels[f"{item_id}:{p}"] = p in violated
        return labels
    raise ValueError(kind)
