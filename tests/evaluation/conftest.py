"""Fixtures for the evaluation app: studies of each kind with items, annotators.

Tests marked `sqlite` also run on the embedded database:
`DATABASE_URL=sqlite:////tmp/arbiter-test.sqlite3 REDIS_URL= pytest -m sqlite tests/evaluation`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from arbiter.accounts.models import Role, User
from evaluation import services
from evaluation.models import Study
from tests.factories import UserFactory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite: also runs on the embedded SQLite database (pytest -m sqlite with a sqlite DATABASE_URL)"
    )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """On SQLite, test in a file, not Django's default shared-cache memory database.

    Concurrent annotators are threads with their own connections; a shared-cache memory
    database locks per table and answers "table is locked" at once instead of waiting out
    busy_timeout, which is not how the embedded database (a WAL file) behaves.
    """
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3") and not db.get("TEST", {}).get("NAME"):
        name = Path(db["NAME"])
        db.setdefault("TEST", {})["NAME"] = str(name.with_name(f"test_{name.name}"))


@pytest.fixture
def sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite-specific (embedded mode)")


def pairwise_row(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": f"Question {i}?",
        "response_a": f"Answer **A{i}**",
        "response_b": f"Answer _B{i}_",
        "model_a": "alpha",
        "model_b": "beta",
        **extra,
    }


def rubric_row(i: int, plans: int = 2) -> dict[str, Any]:
    return {
        "goal": f"Goal {i}",
        "plans": [{"text": f"Plan {p} for goal {i}", "model": f"planner-{p}"} for p in range(plans)],
        "rubric": ["States a hypothesis", "Names a control", "Estimates cost"],
    }


def violation_row(i: int) -> dict[str, Any]:
    return {
        "task_id": i,
        "intent": f"Create contact {i}",
        "agent": "agent-x",
        "policies": [
            {"policy_template_id": "ask_the_user", "policy_category": "user_consent", "description": "Ask first."},
            {
                "policy_template_id": "navigation_limitation",
                "policy_category": "boundary_and_scope_limitation",
                "description": "Stay in the Contacts module.",
            },
        ],
        "trajectory": [
            {"action": "click('contacts')", "observation": "Contacts page"},
            {"action": "fill('name', 'Bob')", "observation": "Form"},
            {"action": "click('save')", "observation": "Saved"},
        ],
    }


def rating_row(i: int) -> dict[str, Any]:
    return {"prompt": f"Say hi {i}", "response": f"Hi {i}", "model": "m1" if i % 2 else "m2"}


ROWS: dict[str, Callable[[int], dict[str, Any]]] = {
    "pairwise": pairwise_row,
    "rubric": rubric_row,
    "violation": violation_row,
    "rating": rating_row,
}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.fixture
def make_study(researcher: User) -> Callable[..., Study]:
    def make(
        kind: str = "pairwise",
        n_items: int = 5,
        overlap: int = 1,
        annotators: list[User] | None = None,
        owner: User | None = None,
        rows: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Study:
        study = services.create_study(
            owner=owner or researcher,
            name=f"{kind} study",
            kind=kind,
            overlap=overlap,
            annotators=annotators or [],
            **kwargs,
        )
        data = rows if rows is not None else [ROWS[kind](i) for i in range(n_items)]
        if data:
            services.import_items(study=study, data=jsonl(data))
        return study

    return make


@pytest.fixture
def make_annotators(db: None) -> Callable[[int], list[User]]:
    def make(n: int) -> list[User]:
        return [UserFactory(role=Role.ANNOTATOR) for _ in range(n)]

    return make
