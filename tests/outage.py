"""A database outage for one test database on the shared server, without stopping it.

`ALTER DATABASE … ALLOW_CONNECTIONS false` refuses new connections and
`pg_terminate_backend` drops the open ones: to the service it is the database going away
(every connection broken, every reconnection refused) while other tests' databases on the
same server carry on. Leaving the block lets connections in again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict


def _allow(admin_url: str, name: str, allow: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allow)
            )
        )
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


@contextmanager
def database_outage(admin_url: str, db_url: str) -> Iterator[None]:
    name = str(conninfo_to_dict(db_url)["dbname"])
    _allow(admin_url, name, False)
    try:
        yield
    finally:
        _allow(admin_url, name, True)
