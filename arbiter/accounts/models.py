"""The user model: Django's user plus one role that decides what the person may see."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    RESEARCHER = "researcher", "Researcher"
    ANNOTATOR = "annotator", "Annotator"
    ADMIN = "admin", "Admin"


class User(AbstractUser):
    """One role per person. Admins may do everything a researcher may, plus Django admin.

    A role field rather than Groups: every view asks one question ("which role?"), and the database
    refuses an unknown role.
    """

    role = models.CharField(max_length=16, choices=Role.choices, default=Role.RESEARCHER)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="user_role_valid"),
        ]

    @property
    def is_admin_role(self) -> bool:
        return self.role == Role.ADMIN or self.is_superuser

    @property
    def is_researcher(self) -> bool:
        """Researchers and admins: both may launch runs and design studies."""
        return self.role == Role.RESEARCHER or self.is_admin_role

    @property
    def is_annotator(self) -> bool:
        return self.role == Role.ANNOTATOR

    def save(self, *args: object, **kwargs: object) -> None:
        # The admin role is what grants Django admin; keep is_staff in step so nobody has one without the other.
        if self.role == Role.ADMIN:
            self.is_staff = True
        elif not self.is_superuser:
            self.is_staff = False
        super().save(*args, **kwargs)  # type: ignore[arg-type]
