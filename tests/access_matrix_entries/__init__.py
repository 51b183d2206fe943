"""Who may open which URL: one module per app, gathered by tests/test_access_matrix.py.

Each module defines
    ENTRIES: dict[str, Access]      # every named URL of the app, "namespace:name" -> Access(...)
    BUILDERS: dict[str, Builder]    # object builders named by Access.objects: builder(owner) -> URL kwargs

`Access.roles` are the roles that may reach the URL ("researcher", "annotator", "admin"; admins are implied
wherever researchers are, but list them anyway so a reader sees it). `objects` names the builder that makes the
objects the URL points at, owned by the researcher; another researcher must get 404 for them unless `shared`.
`method="post"` for endpoints that only accept POST. `auth="token"` for API endpoints authenticated by a token
rather than a session: sessions of every role are refused, and the app's own tests cover tokens.
`auth="public"` for pages anyone may open (login, health).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Builder = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Access:
    roles: frozenset[str] = field(default_factory=frozenset)
    objects: str | None = None
    shared: bool = False
    method: Literal["get", "post"] = "get"
    auth: Literal["session", "token", "public"] = "session"


RESEARCHERS = frozenset({"researcher", "admin"})
ANNOTATORS = frozenset({"annotator", "admin"})
EVERYONE = frozenset({"researcher", "annotator", "admin"})
