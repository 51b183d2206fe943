"""`manage.py worker_credential NAME`: a credential for one GPU worker; prints the token once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workers import services


class Command(BaseCommand):
    help = "Create (or, with --rotate, replace) a GPU worker's credential and print its token once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--rotate", action="store_true", help="replace the token of an existing worker")

    def handle(self, *args: Any, **options: Any) -> None:
        _, token = services.issue_worker_credential(name=options["name"], rotate=options["rotate"])
        self.stdout.write(token)
