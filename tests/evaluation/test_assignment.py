"""The queue: overlap never exceeded, never the same item twice, leases expire, submits are idempotent."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from evaluation import services
from evaluation.models import Assignment, Item, Judgment

# The assignment rules hold on both databases: PostgreSQL (SKIP LOCKED) and SQLite (BEGIN IMMEDIATE).
pytestmark = pytest.mark.sqlite

PICK = {"choice": "left", "strength": None, "rationale": ""}


def test_next_assignment_returns_the_same_open_item_until_submitted(make_study, annotator) -> None:
    study = make_study(n_items=3, annotators=[annotator])
    first = services.next_assignment(annotator=annotator, study=study)
    again = services.next_assignment(annotator=annotator, study=study)
    assert first is not None and again is not None and again.pk == first.pk
    services.submit_judgment(annotator=annotator, assignment_id=first.pk, data=PICK)
    following = services.next_assignment(annotator=annotator, study=study)
    assert following is not None and following.item_id != first.item_id


def test_annotator_never_gets_an_item_twice_and_queue_ends(make_study, annotator) -> None:
    study = make_study(n_items=4, overlap=2, annotators=[annotator])
    seen = []
    while (a := services.next_assignment(annotator=annotator, study=study)) is not None:
        seen.append(a.item_id)
        services.submit_judgment(annotator=annotator, assignment_id=a.pk, data=PICK)
    assert sorted(seen) == sorted(Item.objects.filter(study=study).values_list("id", flat=True))


def test_item_gets_exactly_overlap_judgments(make_study, make_annotators) -> None:
    people = make_annotators(4)
    study = make_study(n_items=1, overlap=2, annotators=people)
    got = [services.next_assignment(annotator=p, study=study) for p in people]
    assert sum(a is not None for a in got) == 2
    for person, a in zip(people, got, strict=True):
        if a is not None:
            services.submit_judgment(annotator=person, assignment_id=a.pk, data=PICK)
    item = Item.objects.get(study=study)
    assert (item.claimed, item.judgment_count) == (2, 2)


def test_second_submit_returns_first_judgment(make_study, annotator) -> None:
    study = make_study(n_items=1, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=study)
    first = services.submit_judgment(annotator=annotator, assignment_id=a.pk, data=PICK)
    second = services.submit_judgment(
        annotator=annotator, assignment_id=a.pk, data={"choice": "right", "strength": None, "rationale": ""}
    )
    assert second.pk == first.pk and second.payload["shown"] == "left"
    assert Judgment.objects.count() == 1
    assert Item.objects.get(study=study).judgment_count == 1


def test_sides_are_unswapped_when_stored(make_study, annotator) -> None:
    study = make_study(n_items=1, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=study)
    Assignment.objects.filter(pk=a.pk).update(swapped=True)
    judgment = services.submit_judgment(annotator=annotator, assignment_id=a.pk, data=PICK)
    assert judgment.payload["choice"] == "b"  # the left side showed response B


def _expire(assignment: Assignment) -> None:
    past = timezone.now() - timedelta(seconds=1)
    Assignment.objects.filter(pk=assignment.pk).update(lease_expires_at=past)


def test_expired_lease_returns_item_to_queue(make_study, make_annotators) -> None:
    slow, fast = make_annotators(2)
    study = make_study(n_items=1, overlap=1, annotators=[slow, fast])
    held = services.next_assignment(annotator=slow, study=study)
    assert services.next_assignment(annotator=fast, study=study) is None  # the only slot is leased
    _expire(held)
    taken = services.next_assignment(annotator=fast, study=study)
    assert taken is not None and taken.item_id == held.item_id
    with pytest.raises(services.LeaseExpired):
        services.submit_judgment(annotator=slow, assignment_id=held.pk, data=PICK)
    item = Item.objects.get(study=study)
    assert item.claimed == 1


def test_expired_but_unreleased_lease_is_renewed_for_its_holder(make_study, annotator) -> None:
    study = make_study(n_items=2, annotators=[annotator])
    held = services.next_assignment(annotator=annotator, study=study)
    _expire(held)
    again = services.next_assignment(annotator=annotator, study=study)
    assert again.pk == held.pk and again.lease_expires_at > timezone.now()


def test_skip_frees_the_slot_for_someone_else(make_study, make_annotators) -> None:
    first, second = make_annotators(2)
    study = make_study(n_items=1, annotators=[first, second])
    a = services.next_assignment(annotator=first, study=study)
    services.skip_assignment(annotator=first, assignment_id=a.pk, flagged=True, flag_reason="garbled")
    assert services.next_assignment(annotator=first, study=study) is None
    b = services.next_assignment(annotator=second, study=study)
    assert b is not None and b.item_id == a.item_id
    with pytest.raises(services.AssignmentClosed):
        services.submit_judgment(annotator=first, assignment_id=a.pk, data=PICK)


def test_database_refuses_over_assignment(make_study) -> None:
    from django.db import IntegrityError, transaction

    study = make_study(n_items=1, overlap=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.filter(study=study).update(claimed=2)


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_annotators_lose_nothing_and_overassign_nothing(make_study, make_annotators) -> None:
    people = make_annotators(32)
    overlap, n_items = 3, 150
    study = make_study(n_items=n_items, overlap=overlap, annotators=people)
    errors: list[BaseException] = []
    submitted: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(len(people))

    def work(person, seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            while (a := services.next_assignment(annotator=person, study=study)) is not None:
                if rng.random() < 0.05:
                    services.skip_assignment(annotator=person, assignment_id=a.pk)
                    continue
                services.submit_judgment(annotator=person, assignment_id=a.pk, data=PICK)
                if rng.random() < 0.1:  # a double click: the retry must change nothing
                    services.submit_judgment(annotator=person, assignment_id=a.pk, data=PICK)
                with lock:
                    submitted[a.item_id] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(p, i)) for i, p in enumerate(people)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    per_item = dict(Judgment.objects.filter(study=study).values_list("item_id").annotate(n=Count("id")))
    assert len(per_item) == n_items  # 0 lost: every item reached
    assert set(per_item.values()) == {overlap}  # 0 over-assigned, 0 missing
    assert sum(submitted.values()) == n_items * overlap  # every accepted submit is stored once
    duplicates = (
        Judgment.objects.filter(study=study).values("item_id", "annotator_id").annotate(n=Count("id")).filter(n__gt=1)
    )
    assert not duplicates.exists()
    assert not Item.objects.filter(study=study).exclude(claimed=overlap).exists()
    assert not Assignment.objects.filter(study=study, completed_at=None, released_at=None).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_double_submit_is_stored_once(make_study, annotator) -> None:
    study = make_study(n_items=2, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=study)
    start = threading.Barrier(4)
    results: list[int] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            start.wait()
            results.append(services.submit_judgment(annotator=annotator, assignment_id=a.pk, data=PICK).pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert Judgment.objects.count() == 1 and set(results) == {Judgment.objects.get().pk}
    assert Item.objects.get(pk=a.item_id).judgment_count == 1


@pytest.mark.django_db(transaction=True)
def test_annotators_racing_for_the_last_slot_get_it_once(make_study, make_annotators) -> None:
    people = make_annotators(6)
    study = make_study(n_items=1, overlap=2, annotators=people)
    start = threading.Barrier(len(people))
    got: list[int] = []
    errors: list[BaseException] = []

    def race(person) -> None:
        try:
            start.wait()
            if (a := services.next_assignment(annotator=person, study=study)) is not None:
                got.append(a.pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(got) == 2 and Item.objects.get(study=study).claimed == 2
    assert Assignment.objects.filter(study=study).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_claim_meeting_the_last_free_item_mid_claim_waits_for_it(make_study, make_annotators) -> None:
    """SKIP LOCKED passes over an item another claim holds; when that was the last free slot, wait for it."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite serialises claims)")
    import time

    import psycopg

    from tests.conftest import current_database_url

    (person,) = make_annotators(1)
    study = make_study(n_items=1, overlap=2, annotators=[person])
    item = Item.objects.get(study=study)
    url = current_database_url().replace("postgres://", "postgresql://", 1)
    got: list[object] = []

    def claim() -> None:
        try:
            got.append(services.next_assignment(annotator=person, study=study))
        finally:
            connection.close()

    with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as watch:
        other.execute("SELECT id FROM evaluation_item WHERE id = %s FOR UPDATE", [item.id])  # another claim, mid-way
        thread = threading.Thread(target=claim)
        thread.start()
        deadline = time.monotonic() + 20
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        while thread.is_alive() and watch.execute(sql).fetchone() == (0,):
            assert time.monotonic() < deadline, "the claim neither finished nor waited"
            time.sleep(0.02)
        other.rollback()  # that claim gave up: the slot is still free
    thread.join(timeout=20)
    assert got and got[0] is not None and got[0].item_id == item.id
