"""ST-WebAgentBench's own files, read as the benchmark writes them. No Django.

- its task file (`stwebagentbench/test.raw.json`: a JSON array of tasks with `intent` and `policies`,
  no trajectories): each task becomes an item that waits until a trajectory for it arrives;
- trajectories keyed by `task_id` (`{task_id, agent, trajectory: [{action, observation}]}`), attached
  to the waiting task, or a new item of the same task for another agent;
- its leaderboard submission (`stwebagentbench/leaderboard/schema.py`: `task_evidence[]` with
  `action_sequence` and a per-policy `safety_report`): the action summaries become the trajectory to
  annotate, and the safety report the automatic judge's verdict;
- its evaluator output (`<agent>_agent_full_res.csv`, one row per task × policy, written by
  `stwebagentbench/result_analysis/analyze.py`): automatic verdicts per task, with the short
  category names of its early releases (`consent`, `boundary`, `exact_task`, …) mapped to the six
  dimensions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from evaluation.importers.rows import ParsedAttachment, ParsedItem, RowError, RowInvalid, check_no_nul, text
from evaluation.stats import POLICY_DIMENSIONS

JUDGE = "ST-WebAgentBench evaluator"
# Short names from the benchmark's evaluator CSVs and README ("category: consent, boundary, privacy,
# exact_task, robustness, …"; the 2024 task file used consent/boundary/exact_task). "privacy" is the
# sensitive-information policy family, which today's task file files under robustness_and_security.
CATEGORY_ALIASES: dict[str, str] = {
    "consent": "user_consent",
    "user_consent": "user_consent",
    "boundary": "boundary_and_scope_limitation",
    "scope": "boundary_and_scope_limitation",
    "exact_task": "strict_execution",
    "strict": "strict_execution",
    "hierarchy": "hierarchy_adherence",
    "robustness": "robustness_and_security",
    "security": "robustness_and_security",
    "privacy": "robustness_and_security",
    "error_handling": "error_handling_and_safety_nets",
    "error": "error_handling_and_safety_nets",
} | {d: d for d in POLICY_DIMENSIONS}
EVALUATOR_COLUMNS = frozenset({"agent_id", "task_id", "policy_fail", "task_success"})


def dimension(value: Any, where: str) -> str:
    """One of the six dimensions, from its full or short name."""
    key = str(value).strip().lower().replace("-", "_").replace(" ", "_") if isinstance(value, str) else ""
    if key not in CATEGORY_ALIASES:
        raise RowInvalid(
            where,
            f"{value!r} is not one of the six dimensions ({', '.join(POLICY_DIMENSIONS)}) "
            "or their short names (consent, boundary, exact_task, hierarchy, robustness, error_handling)",
        )
    return CATEGORY_ALIASES[key]


def task_id_of(value: Any, where: str = "task_id") -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, int | str):
        raise RowInvalid(where, "missing (a task id, e.g. 47)")
    out = str(value).strip()
    if not out or len(out) > 200:
        raise RowInvalid(where, "must be a non-empty id of at most 200 characters")
    return out


def policies(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise RowInvalid("policies", "must be a non-empty list")
    out = []
    for i, policy in enumerate(raw):
        where = f"policies[{i}]"
        if not isinstance(policy, dict):
            raise RowInvalid(where, "must be an object")
        category = dimension(policy.get("policy_category"), f"{where}.policy_category")
        description = policy.get("description")
        if not isinstance(description, str) or not description.strip():
            raise RowInvalid(f"{where}.description", "missing")
        template = policy.get("policy_template_id", "")
        if not isinstance(template, str):
            raise RowInvalid(f"{where}.policy_template_id", "must be a string")
        source = policy.get("source", "")
        out.append(
            {
                "policy_category": category,
                "policy_template_id": template,
                "description": description,
                "source": source if isinstance(source, str) else "",
            }
        )
    return out


def _action_text(summary: dict[str, Any], where: str) -> str:
    action_type = summary.get("action_type")
    if not isinstance(action_type, str) or not action_type.strip():
        raise RowInvalid(f"{where}.action_type", "missing")
    args = summary.get("action_args") or []
    if not isinstance(args, list):
        raise RowInvalid(f"{where}.action_args", "must be a list")
    return f"{action_type}({', '.join(repr(str(a)) for a in args)})"


def steps(raw: Any, name: str) -> list[dict[str, Any]]:
    """A trajectory: [{action, observation}] steps, or the leaderboard's action summaries."""
    if not isinstance(raw, list) or not raw:
        raise RowInvalid(name, "must be a non-empty list of steps {action, observation}")
    out: list[dict[str, Any]] = []
    for i, step in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(step, dict):
            raise RowInvalid(where, "must be an object with action and observation")
        if "action_type" in step:  # the leaderboard's ActionSummary
            entry: dict[str, Any] = {"action": _action_text(step, where), "observation": ""}
            for key, target in (("element_text", "element"), ("observed_url", "url")):
                value = step.get(key)
                if isinstance(value, str) and value:
                    entry[target] = value
            if isinstance(step.get("step"), int):
                entry["step"] = step["step"]
            out.append(entry)
            continue
        action = step.get("action")
        if not isinstance(action, str) or not action.strip():
            raise RowInvalid(f"{where}.action", "missing")
        observation = step.get("observation", "")
        if observation is None:
            observation = ""
        if not isinstance(observation, str):
            raise RowInvalid(f"{where}.observation", "must be a string")
        out.append({"action": action, "observation": observation})
    return out


def _trajectory_field(row: dict[str, Any]) -> tuple[str, Any] | None:
    for name in ("trajectory", "steps", "action_sequence"):
        if name in row and row[name] is not None:
            return name, row[name]
    return None


def agent_of(row: dict[str, Any], default: str) -> str:
    for name in ("agent", "agent_id"):
        if row.get(name) not in (None, ""):
            return text(row, name)[:200]
    return default


def task_or_attachment(row: dict[str, Any], line: int) -> ParsedItem | ParsedAttachment:
    """A task (intent + policies, with or without its trajectory) or a trajectory for a task already uploaded."""
    found = _trajectory_field(row)
    if "safety_report" in row:
        return evidence(row, line, agent=agent_of(row, "agent"))
    if "intent" not in row and "policies" not in row:
        if found is None:
            raise RowInvalid("intent", "missing (a task needs intent and policies; a trajectory row needs task_id)")
        return ParsedAttachment(
            line, task_id_of(row.get("task_id")), agent_of(row, "agent"), trajectory=steps(found[1], found[0])
        )
    payload: dict[str, Any] = {
        "task_id": str(row["task_id"]) if row.get("task_id") is not None else "",
        "intent": text(row, "intent"),
        "policies": policies(row.get("policies")),
        "trajectory": steps(found[1], found[0]) if found else [],
        "agent": agent_of(row, "agent" if found else ""),
    }
    sites = row.get("sites")
    if isinstance(sites, list) and all(isinstance(s, str) for s in sites):
        payload["sites"] = sites
    return ParsedItem(line, payload, waiting=found is None)


# --------------------------------------------------------------------------- automatic verdicts


def _completion(total_reward: float, partial: float) -> dict[str, Any]:
    """analyze.py's task success (total_reward == 1) and partial completion, in a judgment's words."""
    semi = partial if partial > 0 else (1.0 if total_reward > 0 else 0.0)
    completion = "full" if total_reward == 1 else ("partial" if semi > 0 else "none")
    return {"completion": completion, "fraction": round(float(semi), 6), "total_reward": float(total_reward)}


def _number(value: Any, where: str, *, low: float = 0, high: float = 1) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowInvalid(where, f"must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise RowInvalid(where, f"must be between {low:g} and {high:g}")
    return number


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "1.0", "0.0", ""):
        return value.strip().lower() in ("true", "1", "1.0")
    raise RowInvalid(where, f"must be true or false, got {value!r}")


def evidence(row: dict[str, Any], line: int, *, agent: str) -> ParsedAttachment:
    """One TaskEvidence of a leaderboard submission: its action summaries and its safety report."""
    task_id = task_id_of(row.get("task_id"))
    summaries = row.get("action_sequence")
    trajectory = steps(summaries, "action_sequence") if summaries else None
    report = row.get("safety_report")
    if not isinstance(report, list):
        raise RowInvalid("safety_report", "must be a list of per-policy reports")
    total = _number(row.get("total_requirements", 1), "total_requirements", high=10**9) or 1
    satisfied = _number(row.get("satisfied_requirements", 0), "satisfied_requirements", high=10**9)
    verdict = _completion(_number(row.get("total_reward", 0), "total_reward"), satisfied / total)
    step_index = {s.get("step", i): i for i, s in enumerate(trajectory or [])}
    violations, dormant, categories = [], [], []
    for i, entry in enumerate(report):
        where = f"safety_report[{i}]"
        if not isinstance(entry, dict):
            raise RowInvalid(where, "must be an object")
        index = entry.get("policy_index", i)
        if not isinstance(index, int) or index != i:
            raise RowInvalid(f"{where}.policy_index", f"must be {i} (reports come in policy order)")
        category = dimension(entry.get("policy_category"), f"{where}.policy_category")
        categories.append(category)
        if _flag(entry.get("violated", False), f"{where}.violated"):
            raw_step = entry.get("violating_step")
            violations.append({"step": step_index.get(raw_step), "policy": i, "dimension": category})
        elif _flag(entry.get("dormant", False), f"{where}.dormant"):
            dormant.append(i)
    verdict.update(violations=violations, dormant=dormant)
    return ParsedAttachment(
        line, task_id, agent, trajectory=trajectory, verdict=verdict, judge=JUDGE, categories=categories
    )


def is_submission(document: dict[str, Any]) -> bool:
    return isinstance(document.get("task_evidence"), list)


def submission_rows(document: dict[str, Any]) -> Iterator[ParsedAttachment | RowError]:
    """Every task's evidence in a leaderboard submission; "line" is the task's position in task_evidence."""
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    agent = str((metadata or {}).get("agent_id") or "agent")[:200]
    for i, row in enumerate(document["task_evidence"], start=1):
        if not isinstance(row, dict):
            yield RowError(i, "task_evidence", "each task's evidence must be an object")
            continue
        try:
            yield evidence(row, i, agent=agent)
        except RowInvalid as exc:
            yield RowError(i, f"task_evidence[{i - 1}].{exc.field}", exc.message)


def evaluator_rows(rows: Iterable[tuple[int, dict[str, Any] | RowError]]) -> Iterator[ParsedAttachment | RowError]:
    """`*_agent_full_res.csv`: rows of (agent, task, run) × policy grouped into one verdict per task run."""
    groups: dict[tuple[str, str, str], list[tuple[int, dict[str, Any]]]] = {}
    for line, row in rows:
        if isinstance(row, RowError):
            yield row
            continue
        try:
            check_no_nul(row, "")  # agent_id and run_id go into the stored verdict's name as they are
            key = (agent_of(row, "agent"), task_id_of(row.get("task_id")), str(row.get("run_id") or "0"))
        except RowInvalid as exc:
            yield RowError(line, exc.field, exc.message)
            continue
        groups.setdefault(key, []).append((line, row))
    for (agent, task_id, run), members in groups.items():
        name = agent if run in ("", "0") else f"{agent} (run {run})"
        yield _evaluator_verdict(name, task_id, members)


def _evaluator_verdict(
    agent: str, task_id: str, members: list[tuple[int, dict[str, Any]]]
) -> ParsedAttachment | RowError:
    first_line, first = members[0]
    line = first_line
    try:
        if "policy_id" in first:
            members = sorted(members, key=lambda m: _number(m[1].get("policy_id"), "policy_id", high=10**6))
        violations, dormant, categories = [], [], []
        for i, (row_line, row) in enumerate(members):
            line = row_line  # an error names the row it is on
            category = dimension(row.get("category"), "category")
            categories.append(category)
            if _flag(row.get("policy_fail"), "policy_fail"):
                violations.append({"step": None, "policy": i, "dimension": category})
            elif _flag(row.get("policy_dormant", False), "policy_dormant"):
                dormant.append(i)
        line = first_line
        verdict = _completion(
            _number(first.get("task_success"), "task_success"),
            _number(first.get("semi_task_success", 0), "semi_task_success"),
        )
    except RowInvalid as exc:
        return RowError(line, exc.field, exc.message)
    verdict.update(violations=violations, dormant=dormant)
    return ParsedAttachment(first_line, task_id, agent, verdict=verdict, judge=JUDGE, categories=categories)
