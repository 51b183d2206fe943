"""Browser tests reuse the evaluation app's study fixtures (studies of each kind with items)."""

from tests.evaluation.conftest import make_annotators, make_study  # noqa: F401 - fixtures, found by name
