"""SQLAlchemy engines for the services that keep queryable state (gallery records, training
jobs): SQLite in the data directory by default, PostgreSQL when `SDSTACK_DATABASE_URL` says so.

SQLite gets WAL (readers never wait for the one writer), foreign keys and a busy timeout on
every connection, so several processes (a service and its workers) can share one file.

A database server that goes away is not a bug: PostgreSQL engines check each pooled
connection before use (`pool_pre_ping`) and give up connecting after
`CONNECT_TIMEOUT_S`, so the service answers at once while the server is down and serves
again, without a restart, once it is back. Importing this module registers a translator
that turns "cannot reach the database" errors into `Unavailable` (gRPC UNAVAILABLE, HTTP
503) naming the database, instead of an INTERNAL error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from services.common.errors import SdstackError, Unavailable, register_translator

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5
_MAX_REASON_CHARS = 200


def create_engine_for(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout on each connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        postgres = parsed.get_backend_name() == "postgresql"
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if postgres else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas(wal=not in_memory))
    return engine


def check_database(engine: Engine) -> None:
    """Unavailable unless the database answers `SELECT 1` (for health checks)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (OperationalError, InterfaceError, DisconnectionError) as error:
        raise database_unavailable(error) from None


def database_unavailable(error: BaseException) -> Unavailable:
    """The Unavailable a lost database becomes: its driver's first line, no SQL, no trace."""
    reason = str(error.orig if isinstance(error, DBAPIError) else error).strip()
    reason = (reason.splitlines() or ["no answer"])[0][:_MAX_REASON_CHARS]
    return Unavailable(f"database unavailable: {reason}")


def _translate(error: BaseException) -> SdstackError | None:
    """Lost or refused connections (the server is down, restarting or unreachable)."""
    if isinstance(error, OperationalError | InterfaceError | DisconnectionError):
        return database_unavailable(error)
    return None


register_translator(_translate)


def _sqlite_pragmas(*, wal: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    return on_connect
