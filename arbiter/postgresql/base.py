"""Django's PostgreSQL backend, whose connection pool checks connections at hand-out with arbiter.pool's check.

Django builds the pool itself and passes it psycopg_pool's own check (an empty query, one round trip per
checkout) when CONN_HEALTH_CHECKS is on; the pool's `check` cannot be given through OPTIONS. This wrapper
builds the same pool with check_pooled_connection instead, and changes nothing else.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base

from arbiter.pool import check_pooled_connection


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        pools: dict[str, Any] = self._connection_pools  # type: ignore[attr-defined]  # Django's, per alias
        if self.alias not in pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            from psycopg_pool import ConnectionPool

            kwargs = self.get_connection_params()
            kwargs["autocommit"] = True  # as Django's: it sets autocommit properly later on
            pool = ConnectionPool(
                kwargs=kwargs,
                open=False,  # not during start-up, as Django's
                configure=self._configure_connection,  # type: ignore[attr-defined]
                check=check_pooled_connection if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **({} if options is True else options),
            )
            pools.setdefault(self.alias, pool)  # the first of racing threads wins, as Django's
        return pools[self.alias]
