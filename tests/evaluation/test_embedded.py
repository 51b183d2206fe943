"""Embedded mode (SQLite): no SKIP LOCKED, so queue writes are serialised with BEGIN IMMEDIATE.

These tests only make sense on SQLite and skip elsewhere; the assignment rules themselves
(test_assignment.py) run on both databases.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from evaluation import services
from evaluation.models import Item, Judgment

pytestmark = [pytest.mark.sqlite, pytest.mark.usefixtures("sqlite_only")]

PICK = {"choice": "left", "strength": None, "rationale": ""}


@pytest.mark.django_db(transaction=True)
def test_queue_writes_take_the_write_lock_at_begin(make_study, annotator) -> None:
    study = make_study(n_items=2, annotators=[annotator])
    with CaptureQueriesContext(connection) as claim:
        a = services.next_assignment(annotator=annotator, study=study)
    with CaptureQueriesContext(connection) as submit:
        services.submit_judgment(annotator=annotator, assignment_id=a.pk, data=PICK)
    for captured in (claim, submit):
        begins = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("BEGIN")]
        assert begins and all(sql == "BEGIN IMMEDIATE" for sql in begins)


@pytest.mark.django_db(transaction=True)
def test_claim_waits_for_another_writer_and_sees_its_commit(make_study, make_annotators) -> None:
    first, second = make_annotators(2)
    study = make_study(n_items=1, overlap=1, annotators=[first, second])
    item = Item.objects.get(study=study)
    # Another process (the embedded Celery worker, a second web process) holds the write lock and
    # fills the only slot; the claim must queue behind it and then find nothing left, not fail.
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=20, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE evaluation_item SET claimed = overlap WHERE id = ?", [item.pk])
    committer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    committer.start()
    try:
        got = services.next_assignment(annotator=second, study=study)
    finally:
        committer.join()
        other.close()
    assert got is None
    assert Item.objects.filter(pk=item.pk, claimed=F("overlap")).exists()


@pytest.mark.django_db(transaction=True)
def test_a_few_annotators_share_the_queue_without_loss(make_study, make_annotators) -> None:
    people = make_annotators(4)
    study = make_study(n_items=20, overlap=2, annotators=people)
    errors: list[BaseException] = []
    accepted: list[int] = []
    lock = threading.Lock()

    def work(person) -> None:
        try:
            while (a := services.next_assignment(annotator=person, study=study)) is not None:
                services.submit_judgment(annotator=person, assignment_id=a.pk, data=PICK)
                with lock:
                    accepted.append(a.pk)
                time.sleep(0)  # let the others in between: interleave, don't run in turns
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(accepted) == 40 == Judgment.objects.filter(study=study).count()
    assert set(Judgment.objects.values_list("assignment_id", flat=True)) == set(accepted)
    assert not Item.objects.filter(study=study).exclude(claimed=2, judgment_count=2).exists()
