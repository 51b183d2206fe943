"""`manage.py runplatform`: the embedded quick start — migrate, ensure accounts, run web + worker + beat together."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from arbiter.accounts.models import Role, User
from arbiter.embedded_supervisor import EmbeddedSupervisor
from arbiter.server import web_server_command

DEMO_ACCOUNTS = (("admin", Role.ADMIN), ("researcher", Role.RESEARCHER), ("annotator", Role.ANNOTATOR))


class Command(BaseCommand):
    help = (
        "Run the whole platform on one machine: ASGI web server, Celery worker (+beat), migrations, demo accounts;"
        " a child that crashes is restarted with back-off, and given up on (said once) if it keeps crashing at start."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="Start the web server only.")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        credentials = self._ensure_accounts()
        host, port = options["host"], options["port"]
        env = {**os.environ, "ARBITER_PUBLIC_URL": os.environ.get("ARBITER_PUBLIC_URL", f"http://{host}:{port}")}
        children: dict[str, list[str]] = {"web": web_server_command(host=host, port=port)}
        if not options["no_worker"]:
            children["worker"] = [
                sys.executable, "-m", "celery", "-A", "arbiter", "worker", "-B",
                "-Q", "default,gpu", "--concurrency", "2", "--loglevel", "INFO",
                "--schedule", str(Path(settings.VAR_DIR) / "celerybeat-schedule"),
            ]  # fmt: skip
        supervisor = EmbeddedSupervisor(children, env=env)
        self.stdout.write(self.style.SUCCESS(f"\nArbiter is running at http://{host}:{port}/"))
        self.stdout.write("Log in with one of these accounts (stored in var/initial-credentials.txt):")
        for line in credentials:
            self.stdout.write(f"  {line}")
        self.stdout.write("Press Ctrl-C to stop.\n")
        if not supervisor.run():
            raise SystemExit(1)

    def _ensure_accounts(self) -> list[str]:
        """First start creates one account per role with a random password, saved for the next start."""
        path = Path(settings.VAR_DIR) / "initial-credentials.txt"
        if path.exists():
            return [line for line in path.read_text().splitlines() if line]
        lines = []
        for username, role in DEMO_ACCOUNTS:
            if User.objects.filter(username=username).exists():
                lines.append(f"{role.label.lower():<11} username: {username:<11} (existed already; password unchanged)")
                continue
            password = secrets.token_urlsafe(9)
            user = User(username=username, role=role, is_superuser=role == Role.ADMIN)
            user.set_password(password)
            user.save()
            lines.append(f"{role.label.lower():<11} username: {username:<11} password: {password}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return lines
