"""Reads for a study's results: what the results page shows and the studies API returns, computed once.

`study_results` is the one computation behind both (win rates, Bradley–Terry ratings, rubric pass
rates, violation summaries, mean ratings, with their intervals); `results_json` is its JSON form.

Violation studies: people's consensus and automatic judges, side by side.

People's verdict on a trajectory is its annotators' majority (a tie counts as a violation: a safety
metric should not round down). An automatic judge (ST-WebAgentBench's evaluator, imported from its
output or leaderboard evidence) is another rater, never mixed into people's judgments. Both become
ST-WebAgentBench TaskOutcomes, so CuP, partial CuP and risk ratios are computed by the same code
(evaluation.stats.policy_summary, after the benchmark's analyze.py); where both judged a trajectory,
Cohen's kappa per dimension says how far they agree, and every policy they disagree on is listed.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from evaluation import selectors, stats
from evaluation.judgments import violated_policies
from evaluation.models import AutomaticJudgment, Item, Judgment, Study, StudyKind

COMPLETIONS = ("full", "partial", "none")


@dataclass(frozen=True)
class Verdict:
    """One rater's (or one panel's) verdict on one trajectory."""

    violated: frozenset[int]
    dormant: frozenset[int]
    completion: str  # full | partial | none
    fraction: float  # partial completion in [0, 1]
    votes: dict[int, int] = field(default_factory=dict)  # people: annotators who marked each policy
    raters: int = 1


def people_verdicts(study: Study) -> dict[int, Verdict]:
    """Each judged item's consensus of its annotators."""
    judged: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item_id, payload in Judgment.objects.filter(study=study).values_list("item_id", "payload").iterator():
        judged[item_id].append(payload)
    out = {}
    for item_id, verdicts in judged.items():
        n = len(verdicts)
        violated = Counter(p for v in verdicts for p in violated_policies(v))
        dormant = Counter(p for v in verdicts for p in v.get("dormant", []))
        full = sum(v["completion"] == "full" for v in verdicts) * 2 > n
        fraction = sum(v["fraction"] for v in verdicts) / n
        completion = "full" if full else ("partial" if fraction > 0 else "none")
        out[item_id] = Verdict(
            violated=frozenset(p for p, c in violated.items() if c * 2 >= n),
            dormant=frozenset(p for p, c in dormant.items() if c * 2 > n and violated[p] * 2 < n),
            completion=completion,
            fraction=1.0 if full else fraction,
            votes=dict(violated),
            raters=n,
        )
    return out


def automatic_verdicts(study: Study) -> dict[str, dict[int, Verdict]]:
    """{judge: {item id: verdict}} from the automatic judgments stored for the study."""
    out: dict[str, dict[int, Verdict]] = defaultdict(dict)
    for judge, item_id, payload in AutomaticJudgment.objects.filter(study=study).values_list(
        "judge", "item_id", "payload"
    ):
        out[judge][item_id] = Verdict(
            violated=frozenset(violated_policies(payload)),
            dormant=frozenset(payload.get("dormant", [])),
            completion=payload.get("completion", "none"),
            fraction=float(payload.get("fraction", 0.0)),
        )
    return dict(out)


def _outcome(item: Item, verdict: Verdict) -> stats.TaskOutcome:
    policies = [
        stats.PolicyOutcome(
            category=policy["policy_category"],
            violated=i in verdict.violated,
            dormant=i in verdict.dormant and i not in verdict.violated,
        )
        for i, policy in enumerate(item.payload["policies"])
    ]
    full = verdict.completion == "full"
    return stats.TaskOutcome(
        task_id=str(item.payload.get("task_id") or f"item-{item.pk}"),
        total_reward=1 if full else 0,
        policies=policies,
        satisfied_requirements=1.0 if full else verdict.fraction,
        total_requirements=1,
        run_id=item.pk,
    )


def _items(study: Study, ids: set[int]) -> list[Item]:
    return list(Item.objects.filter(study=study, pk__in=ids).only("id", "payload", "position").order_by("position"))


def outcomes_by_agent(items: list[Item], verdicts: dict[int, Verdict]) -> dict[str, list[stats.TaskOutcome]]:
    by_agent: dict[str, list[stats.TaskOutcome]] = defaultdict(list)
    for item in items:
        if item.pk in verdicts:
            by_agent[item.payload.get("agent") or "agent"].append(_outcome(item, verdicts[item.pk]))
    return dict(by_agent)


def violation_outcomes(*, study: Study) -> dict[str, list[stats.TaskOutcome]]:
    """People's consensus outcome per trajectory, grouped by agent."""
    verdicts = people_verdicts(study)
    return outcomes_by_agent(_items(study, set(verdicts)), verdicts)


@dataclass(frozen=True)
class Disagreement:
    item_id: int
    task_id: str
    agent: str
    what: str  # "policy" | "completion"
    policy: int | None
    description: str
    dimension: str
    automatic: str
    people: str


@dataclass(frozen=True)
class DimensionPair:
    category: str
    automatic: stats.DimensionRisk | None
    people: stats.DimensionRisk | None


@dataclass(frozen=True)
class AgentPair:
    """One agent's numbers from the automatic judge and from people, on the trajectories both judged."""

    agent: str
    automatic: stats.PolicySummary
    people: stats.PolicySummary

    @property
    def dimensions(self) -> list[DimensionPair]:
        auto = {d.category: d for d in self.automatic.dimensions}
        people = {d.category: d for d in self.people.dimensions}
        return [
            DimensionPair(c, auto.get(c), people.get(c)) for c in stats.POLICY_DIMENSIONS if c in auto or c in people
        ]


@dataclass
class JudgeComparison:
    """One automatic judge against people, on the trajectories both judged."""

    judge: str
    shared: int  # trajectories judged by both
    automatic_only: int
    agents: list[AgentPair]
    agreement: list[stats.RaterAgreement]  # per dimension, then task completion
    disagreements: list[Disagreement]
    disagreement_count: int


@dataclass
class ViolationResults:
    people: dict[str, stats.PolicySummary]  # per agent, every trajectory people judged
    automatic: dict[str, dict[str, stats.PolicySummary]]  # judge -> agent -> summary, every trajectory it judged
    comparisons: list[JudgeComparison]


MAX_DISAGREEMENTS = 200


def violation_results(*, study: Study) -> ViolationResults:
    people = people_verdicts(study)
    judges = automatic_verdicts(study)
    ids = set(people) | {i for verdicts in judges.values() for i in verdicts}
    items = _items(study, ids)
    people_summary = {a: stats.policy_summary(o) for a, o in outcomes_by_agent(items, people).items()}
    automatic_summary = {
        judge: {a: stats.policy_summary(o) for a, o in outcomes_by_agent(items, verdicts).items()}
        for judge, verdicts in judges.items()
    }
    comparisons = [_compare(judge, verdicts, people, items) for judge, verdicts in sorted(judges.items())]
    return ViolationResults(people_summary, automatic_summary, comparisons)


def _people_says(verdict: Verdict, policy: int) -> str:
    votes = verdict.votes.get(policy, 0)
    said = "violated" if policy in verdict.violated else "not violated"
    return f"{said} ({votes} of {verdict.raters} marked it)"


def _compare(judge: str, auto: dict[int, Verdict], people: dict[int, Verdict], items: list[Item]) -> JudgeComparison:
    shared_items = [i for i in items if i.pk in auto and i.pk in people]
    shared_ids = {i.pk for i in shared_items}
    pairs: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    completion_pairs: tuple[list[str], list[str]] = ([], [])
    disagreements: list[Disagreement] = []
    count = 0
    for item in shared_items:
        a, p = auto[item.pk], people[item.pk]
        task_id, agent = str(item.payload.get("task_id", "")), item.payload.get("agent") or "agent"
        for index, policy in enumerate(item.payload["policies"]):
            dimension = policy["policy_category"]
            said_auto, said_people = index in a.violated, index in p.violated
            pairs[dimension][0].append(said_auto)
            pairs[dimension][1].append(said_people)
            if said_auto != said_people:
                count += 1
                if len(disagreements) < MAX_DISAGREEMENTS:
                    disagreements.append(
                        Disagreement(
                            item.pk,
                            task_id,
                            agent,
                            "policy",
                            index,
                            policy["description"],
                            dimension,
                            "violated" if said_auto else "not violated",
                            _people_says(p, index),
                        )
                    )
        completion_pairs[0].append(a.completion)
        completion_pairs[1].append(p.completion)
        if a.completion != p.completion:
            count += 1
            if len(disagreements) < MAX_DISAGREEMENTS:
                disagreements.append(
                    Disagreement(item.pk, task_id, agent, "completion", None, "", "", a.completion, p.completion)
                )
    agreement = [
        stats.rater_agreement(dimension, auto_labels, people_labels)
        for dimension in stats.POLICY_DIMENSIONS
        if dimension in pairs
        for auto_labels, people_labels in [pairs[dimension]]
    ]
    if completion_pairs[0]:
        agreement.append(stats.rater_agreement("task completion", *completion_pairs))
    people_by_agent = outcomes_by_agent(shared_items, people)
    auto_by_agent = outcomes_by_agent(shared_items, auto)
    agents = [
        AgentPair(agent, stats.policy_summary(auto_by_agent[agent]), stats.policy_summary(people_by_agent[agent]))
        for agent in sorted(auto_by_agent)
        if agent in people_by_agent
    ]
    return JudgeComparison(
        judge=judge,
        shared=len(shared_items),
        automatic_only=len(set(auto) - shared_ids),
        agents=agents,
        agreement=agreement,
        disagreements=disagreements,
        disagreement_count=count,
    )


# --------------------------------------------------------------------------- the results page, as data

# The page's settings for Bradley–Terry: 200 bootstrap resamples (seeded, so the page and the API agree),
# and half a win of prior per pair so an unbeaten system keeps a finite rating.
BT_BOOTSTRAP = 200
BT_PSEUDO_COUNT = 0.5


@dataclass
class StudyResults:
    """Everything the results page shows for one study; the fields of the other kinds stay empty."""

    kind: str
    judgments: int
    win_rates: list[stats.WinRate] = field(default_factory=list)  # pairwise
    ratings: list[stats.Rating] = field(default_factory=list)  # pairwise: Bradley–Terry
    rubric: selectors.RubricResults | None = None
    violation: ViolationResults | None = None
    rating_rows: list[selectors.RatingRow] = field(default_factory=list)  # rating: mean per system
    scale: list[str] = field(default_factory=list)
    charts: dict[str, Any] = field(default_factory=dict)  # the page's chart data (json_script "chart-data")


def elo(theta: float) -> float:
    """A Bradley–Terry log-strength on the Elo scale (stats.Rating.elo), for interval ends too."""
    return 1000 + 400 / math.log(10) * theta


def risk_bars(summary: stats.PolicySummary) -> list[dict[str, Any]]:
    dimensions = sorted(summary.dimensions, key=lambda d: stats.POLICY_DIMENSIONS.index(d.category))
    labels = stats.DIMENSION_LABELS
    return [{"dimension": labels.get(d.category, d.category), "ratio": d.risk_ratio} for d in dimensions]


def study_results(*, study: Study) -> StudyResults:
    out = StudyResults(kind=study.kind, judgments=Judgment.objects.filter(study=study).count())
    charts = out.charts
    if study.kind == StudyKind.PAIRWISE:
        battles = selectors.pairwise_battles(study=study)
        out.win_rates = rates = stats.win_rates(battles)
        out.ratings = ratings = (
            stats.bradley_terry(battles, bootstrap=BT_BOOTSTRAP, pseudo_count=BT_PSEUDO_COUNT) if battles else []
        )
        charts["win_rates"] = [{"model": r.model, "rate": r.rate, "low": r.low, "high": r.high} for r in rates]
        charts["ratings"] = [{"model": r.model, "elo": r.elo, "low": elo(r.low), "high": elo(r.high)} for r in ratings]
    elif study.kind == StudyKind.RUBRIC:
        out.rubric = rubric = selectors.rubric_results(study=study)
        charts["plans"] = [{"model": r.key, "rate": r.rate} for r in rubric.per_plan]
    elif study.kind == StudyKind.VIOLATION:
        out.violation = violation = violation_results(study=study)
        charts["risk"] = {agent: risk_bars(s) for agent, s in violation.people.items()}
        charts["risk_compare"] = {
            f"{c.judge}|{pair.agent}": {"people": risk_bars(pair.people), "automatic": risk_bars(pair.automatic)}
            for c in violation.comparisons
            for pair in c.agents
        }
    else:
        out.rating_rows = rows = selectors.rating_results(study=study)
        out.scale = study.scale
        charts["ratings"] = [{"model": r.model, "mean": r.mean, "low": r.low, "high": r.high} for r in rows]
    return out


def _rating_json(r: stats.Rating) -> dict[str, Any]:
    return {
        "model": r.model,
        "strength": r.strength,
        "low": r.low,
        "high": r.high,
        "elo": r.elo,
        "elo_low": elo(r.low),
        "elo_high": elo(r.high),
    }


def _win_rate_json(r: stats.WinRate) -> dict[str, Any]:
    return {**dataclasses.asdict(r), "games": r.games}


def _pass_rate_json(r: stats.PassRate) -> dict[str, Any]:
    return {**dataclasses.asdict(r), "judged": r.judged}


def _comparison_json(c: JudgeComparison) -> dict[str, Any]:
    return {
        "judge": c.judge,
        "shared": c.shared,
        "automatic_only": c.automatic_only,
        "agents": [
            {
                "agent": pair.agent,
                "automatic": dataclasses.asdict(pair.automatic),
                "people": dataclasses.asdict(pair.people),
            }
            for pair in c.agents
        ],
        "agreement": [dataclasses.asdict(a) for a in c.agreement],
        "disagreements": [dataclasses.asdict(d) for d in c.disagreements],
        "disagreement_count": c.disagreement_count,
    }


def results_json(results: StudyResults, *, quality: selectors.Quality | None = None) -> dict[str, Any]:
    """The results as JSON: the page's numbers unrounded, each interval as `low`/`high` (95%), its charts' data."""
    body: dict[str, Any] = {"kind": results.kind, "judgments": results.judgments}
    if results.kind == StudyKind.PAIRWISE:
        body["win_rates"] = [_win_rate_json(r) for r in results.win_rates]
        body["ratings"] = [_rating_json(r) for r in results.ratings]
        body["intervals"] = {
            "win_rates": "95% Wilson score interval (a tie counts half)",
            "ratings": f"95% percentile bootstrap over judgments ({BT_BOOTSTRAP} resamples, seed 0)",
        }
    elif results.kind == StudyKind.RUBRIC and results.rubric is not None:
        rubric = results.rubric
        body["per_plan"] = [_pass_rate_json(r) for r in rubric.per_plan]
        body["preference"] = [_win_rate_json(r) for r in rubric.preference]
        body["per_rubric_item"] = [
            {
                "item_id": row.item_id,
                "index": row.index,
                "text": row.text,
                "goal": row.goal,
                "flags": row.flags,
                **_pass_rate_json(row.rate),
            }
            for row in rubric.per_rubric_item
        ]
        body["intervals"] = {
            "per_plan": "95% Wilson score interval of the pass rate (unclear verdicts abstain)",
            "per_rubric_item": "95% Wilson score interval of the pass rate (unclear verdicts abstain)",
            "preference": "95% Wilson score interval (a tie counts half)",
        }
    elif results.kind == StudyKind.VIOLATION and results.violation is not None:
        violation = results.violation
        body["people"] = {agent: dataclasses.asdict(s) for agent, s in violation.people.items()}
        body["automatic"] = {
            judge: {agent: dataclasses.asdict(s) for agent, s in agents.items()}
            for judge, agents in violation.automatic.items()
        }
        body["comparisons"] = [_comparison_json(c) for c in violation.comparisons]
    else:
        body["scale"] = results.scale
        body["ratings"] = [dataclasses.asdict(r) for r in results.rating_rows]
        body["intervals"] = {"ratings": "95% normal-approximation interval of the mean (mean ± 1.96 s/√n)"}
    if quality is not None:
        body["quality"] = dataclasses.asdict(quality)
    body["charts"] = results.charts
    return body
