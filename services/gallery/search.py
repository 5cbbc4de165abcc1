"""Full-text search on prompts: SQLite FTS5 or PostgreSQL full-text, same behaviour on both.

A search is split into words (letters and digits; case, punctuation and A1111 syntax such
as `(house:1.2)` are ignored) and matches the prompts that contain every word, each as a
word prefix: `hous vill` finds "a modern Villa, houses". Both backends split the prompt at
the same places: FTS5's `unicode61` tokenizer at anything not a letter or digit; on
PostgreSQL ASCII punctuation becomes spaces before the `simple` configuration reads it
(its parser would otherwise keep `house.png` whole and drop `<lora:name:1>` as an XML tag).

SQLite: an FTS5 table `images_fts` fed by triggers on `images`. Its rowids come from a
small map table (`images_fts_ids`), because the rowid of `images` itself (a table keyed by
text ids) is not stable across VACUUM. PostgreSQL: a GIN index on
`to_tsvector('simple', prompt)`, used by the `@@` match below.
"""

from __future__ import annotations

import re

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    column,
    false,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import func

_WORD = re.compile(r"[^\W_]+")
# Above this many matches, SQLite walks the owner's images newest first and tests each
# against the set of matches (stops after one page); at or below, it starts from the
# matches and sorts them. Either plan stays within a few ms of the other's best case.
BROAD_MATCHES = 1000
_FTS_IDS = table("images_fts_ids", column("rowid", Integer), column("image_id", String))
_PG_CONFIG = literal_column("'simple'::regconfig")
# The indexed expression; a query must spell it the same way to use the index.
_PG_VECTOR = "to_tsvector('simple'::regconfig, regexp_replace(prompt, '[[:punct:]]', ' ', 'g'))"

_SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS images_fts_ids ("
    " rowid INTEGER PRIMARY KEY, image_id VARCHAR(32) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5("
    " prompt, tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')",
    "CREATE TRIGGER IF NOT EXISTS images_fts_insert AFTER INSERT ON images BEGIN"
    " INSERT INTO images_fts_ids (image_id) VALUES (new.id);"
    " INSERT INTO images_fts (rowid, prompt) VALUES (last_insert_rowid(), new.prompt);"
    " END",
    "CREATE TRIGGER IF NOT EXISTS images_fts_delete AFTER DELETE ON images BEGIN"
    " DELETE FROM images_fts WHERE rowid ="
    "  (SELECT rowid FROM images_fts_ids WHERE image_id = old.id);"
    " DELETE FROM images_fts_ids WHERE image_id = old.id;"
    " END",
    "CREATE TRIGGER IF NOT EXISTS images_fts_update AFTER UPDATE OF prompt ON images BEGIN"
    " UPDATE images_fts SET prompt = new.prompt WHERE rowid ="
    "  (SELECT rowid FROM images_fts_ids WHERE image_id = old.id);"
    " END",
)
# Rows stored before the index existed (an older database) are indexed once.
_SQLITE_BACKFILL = (
    "INSERT INTO images_fts_ids (image_id) SELECT id FROM images"
    " WHERE id NOT IN (SELECT image_id FROM images_fts_ids)",
    "INSERT INTO images_fts (rowid, prompt) SELECT f.rowid, i.prompt"
    " FROM images_fts_ids f JOIN images i ON i.id = f.image_id"
    " WHERE f.rowid NOT IN (SELECT rowid FROM images_fts)",
)
_PG_DDL = (f"CREATE INDEX IF NOT EXISTS ix_images_prompt_fts ON images USING gin (({_PG_VECTOR}))",)


def install(connection: Connection) -> None:
    """Create the search index for the connection's backend (idempotent)."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        for statement in (*_SQLITE_DDL, *_SQLITE_BACKFILL):
            connection.execute(text(statement))
    elif dialect == "postgresql":
        for statement in _PG_DDL:
            connection.execute(text(statement))


def words(search: str) -> list[str]:
    """The lower-cased words of a search, in order, without repeats."""
    return list(dict.fromkeys(word.lower() for word in _WORD.findall(search)))


def _fts_query(terms: list[str]) -> str:
    return " ".join(f'"{term}"*' for term in terms)


def sqlite_match_count(session: Session, search: str) -> int:
    """How many prompts (of every owner) match `search`: cheap, from the FTS index."""
    terms = words(search)
    if not terms:
        return 0
    query = text("SELECT count(*) FROM images_fts WHERE images_fts MATCH :q")
    return int(session.scalar(query, {"q": _fts_query(terms)}) or 0)


def prompt_matches(
    dialect: str,
    id_column: ColumnElement[str],
    prompt: ColumnElement[str],
    search: str,
    *,
    broad: bool = False,
) -> ColumnElement[bool]:
    """A condition true for the images whose prompt holds every word of `search`.

    A search without any word (only punctuation) matches nothing. `broad` (SQLite): the
    search matches many prompts (see BROAD_MATCHES), so test rows against it instead of
    starting from its matches.
    """
    terms = words(search)
    if not terms:
        return false()
    if dialect == "postgresql":
        query = " & ".join(f"{term}:*" for term in terms)
        vector = literal_column(_PG_VECTOR.replace("(prompt,", "(images.prompt,"))
        return vector.op("@@")(func.to_tsquery(_PG_CONFIG, query))
    if dialect == "sqlite":
        query = _fts_query(terms)
        if broad:
            own_rowid = (
                select(_FTS_IDS.c.rowid).where(_FTS_IDS.c.image_id == id_column).scalar_subquery()
            )
            hits = text(
                "SELECT rowid FROM images_fts WHERE images_fts MATCH :fts_query"
            ).bindparams(fts_query=query)
            return own_rowid.in_(hits.columns(column("rowid", Integer)))
        matching = (
            text(
                "SELECT f.image_id FROM images_fts_ids f WHERE f.rowid IN"
                " (SELECT rowid FROM images_fts WHERE images_fts MATCH :fts_query)"
            )
            .bindparams(fts_query=query)
            .columns(column("image_id", String))
        )
        return id_column.in_(matching)
    pattern = "%" + "%".join(terms) + "%"  # other backends: a plain (unindexed) scan
    return func.lower(prompt).like(pattern)
