"""Gallery records in SQL: images, their tags, LoRAs, boards and lineage.

SQLite in the data directory by default, PostgreSQL when the URL says so. Every read and
write is scoped by owner, and an image of another owner is reported exactly like a missing
one, so ids leak nothing. The repositories return frozen dataclasses, never ORM objects:
callers never hold a session.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.gallery import search as fulltext

MAX_LIMIT = 200
MAX_OWNER_LENGTH = 128
MAX_TAG_LENGTH = 64
MAX_TAGS = 64
MAX_SEARCH_LENGTH = 500
MAX_BOARD_NAME_LENGTH = 100
MAX_LINEAGE_DEPTH = 100
_OWNER = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # NUL breaks PostgreSQL text; none belong in a name


# --------------------------------------------------------------------------- schema


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zones: values are stored as naive UTC (fixed-width text, so they sort
    correctly) and come back aware. Naive inputs are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def _new_id() -> str:
    return uuid.uuid4().hex


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImageModel(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    # Indexed by ix_images_owner_created_id, whose leading column it is.
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True, default=_utcnow)
    request_id: Mapped[str] = mapped_column(String(128), default="")
    object_key: Mapped[str] = mapped_column(String(1024))
    thumbnail_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    sampler: Mapped[str] = mapped_column(String(128), default="")
    steps: Mapped[int] = mapped_column(Integer)
    cfg_scale: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(255), default="", index=True)
    model_hash: Mapped[str] = mapped_column(String(64), default="")
    vae_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    loras: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    parent_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="SET NULL"), nullable=True, index=True
    )
    favourite: Mapped[bool] = mapped_column(Boolean, default=False)
    infotext: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The infotext's key-values as parsed."""
    generation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What made the image (`GenerationRequest` JSON), as it was resolved; None for images
    stored before it was kept, whose request is read from their infotext."""

    __table_args__ = (
        Index("ix_images_owner_created_id", "owner", created_at.desc(), id.desc()),
        Index("ix_images_owner_sha256", "owner", "sha256"),
    )


class TagModel(Base):
    __tablename__ = "tags"

    image_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(MAX_TAG_LENGTH), primary_key=True, index=True)


class ImageLoraModel(Base):
    """One row per LoRA an image used: the `lora` filter as an indexed join, on any backend.

    `images.loras` stays the source of truth (weights, hashes); this table mirrors the names.
    """

    __tablename__ = "image_loras"

    image_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class BoardModel(Base):
    __tablename__ = "boards"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_LENGTH), index=True)
    name: Mapped[str] = mapped_column(String(MAX_BOARD_NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)

    __table_args__ = (UniqueConstraint("owner", "name", name="uq_boards_owner_name"),)


class BoardImageModel(Base):
    __tablename__ = "board_images"

    board_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class PendingDeletionModel(Base):
    """Objects of a deleted record that may still be in the store.

    Written in the transaction that deletes the record and removed once the objects are
    gone, so a crash in between leaves reconcile a list of what to remove, and an object
    whose record was deleted is never mistaken for one whose record was never written.
    """

    __tablename__ = "pending_deletions"

    object_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)


def create_schema(engine: Engine) -> None:
    """Create the tables and the full-text index that are missing (idempotent)."""
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        _add_missing_columns(connection)
        fulltext.install(connection)


# Columns added after the first release: (table, column, DDL type and default).
_ADDED_COLUMNS = (
    ("images", "size_bytes", "BIGINT NOT NULL DEFAULT 0"),
    ("images", "generation", "JSON"),
)


def _add_missing_columns(connection: Connection) -> None:
    """Bring a database made by an older version up to date (create_all adds no columns)."""
    inspector = inspect(connection)
    for table, column, ddl in _ADDED_COLUMNS:
        present = {c["name"] for c in inspector.get_columns(table)}
        if column not in present:
            connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class LoraUse:
    """A LoRA applied to an image: name, U-Net weight and A1111 short hash."""

    name: str
    weight: float = 1.0
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "hash": self.hash}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> LoraUse:
        return cls(str(value["name"]), float(value.get("weight", 1.0)), str(value.get("hash", "")))


@dataclass(frozen=True)
class NewImage:
    """What a new record is made of; `id` and `created_at` are filled in when left out."""

    owner: str
    object_key: str
    width: int
    height: int
    seed: int
    steps: int
    cfg_scale: float
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = ""
    model_name: str = ""
    model_hash: str = ""
    vae_name: str | None = None
    loras: Sequence[LoraUse | Mapping[str, Any]] = ()
    request_id: str = ""
    sha256: str = ""
    size_bytes: int = 0
    thumbnail_key: str | None = None
    parent_id: str | None = None
    favourite: bool = False
    infotext: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    generation: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class ImageRow:
    id: str
    owner: str
    created_at: datetime
    request_id: str
    object_key: str
    thumbnail_key: str | None
    sha256: str
    size_bytes: int
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    model_name: str
    model_hash: str
    vae_name: str | None
    loras: tuple[LoraUse, ...]
    parent_id: str | None
    favourite: bool
    infotext: str
    params: dict[str, Any]
    generation: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    board_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    items: tuple[ImageRow, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class BoardRow:
    id: str
    owner: str
    name: str
    created_at: datetime
    image_count: int = 0


# --------------------------------------------------------------------------- validation


def check_owner(owner: str) -> str:
    """`owner` if it is a valid user id (the contract's rule), else InvalidArgument."""
    if not owner or not owner.strip():
        raise InvalidArgument("owner", "must not be empty")
    if len(owner) > MAX_OWNER_LENGTH:
        raise InvalidArgument("owner", f"must be at most {MAX_OWNER_LENGTH} characters")
    if not _OWNER.match(owner):
        raise InvalidArgument("owner", "must be characters of A-Z a-z 0-9 _ . @ -")
    return owner


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def _clean_tags(tags: Iterable[str]) -> list[str]:
    """Tags stripped and de-duplicated (first spelling kept), each 1..64 characters."""
    cleaned: dict[str, None] = {}
    for tag in tags:
        text = tag.strip()
        if not text:
            raise InvalidArgument("tags", "must not contain empty tags")
        if len(text) > MAX_TAG_LENGTH:
            raise InvalidArgument("tags", f"each tag must be at most {MAX_TAG_LENGTH} characters")
        if _CONTROL.search(text):
            raise InvalidArgument("tags", "must not contain control characters")
        cleaned.setdefault(text, None)
    if len(cleaned) > MAX_TAGS:
        raise InvalidArgument("tags", f"must be at most {MAX_TAGS} tags")
    return list(cleaned)


# --------------------------------------------------------------------------- cursors


def encode_cursor(created_at: datetime, image_id: str) -> str:
    """Opaque position after (`created_at`, `image_id`) in newest-first order."""
    text = f"{created_at.astimezone(UTC).isoformat()}|{image_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, image_id = raw.split("|")
        created_at = datetime.fromisoformat(stamp)
        int(image_id, 16)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidArgument("cursor", "is not a cursor this service returned") from error
    if created_at.tzinfo is None or len(image_id) != 32:
        raise InvalidArgument("cursor", "is not a cursor this service returned")
    return created_at.astimezone(UTC), image_id


# --------------------------------------------------------------------------- repository


def _sessions(source: Engine | sessionmaker[Session]) -> sessionmaker[Session]:
    if isinstance(source, Engine):
        return sessionmaker(source, expire_on_commit=False)
    return source


def _lora_json(lora: LoraUse | Mapping[str, Any]) -> dict[str, Any]:
    use = lora if isinstance(lora, LoraUse) else LoraUse.from_json(lora)
    if not use.name:
        raise InvalidArgument("loras.name", "must not be empty")
    return use.to_json()


class ImageRecords:
    """Image records of every owner; each method acts only on the given owner's images."""

    def __init__(self, source: Engine | sessionmaker[Session]) -> None:
        self._sessions = _sessions(source)

    # -- writes

    def add(self, record: NewImage) -> ImageRow:
        """Store a new record; `parent_id` must name an image of the same owner."""
        owner = check_owner(record.owner)
        tags = _clean_tags(record.tags)
        loras = [_lora_json(lora) for lora in record.loras]
        with self._sessions.begin() as session:
            if record.parent_id is not None:
                _find_image(session, owner, record.parent_id)
            model = _model_from(record, loras)
            session.add(model)
            session.flush()
            session.add_all(TagModel(image_id=model.id, tag=tag) for tag in tags)
            names = dict.fromkeys(lora["name"] for lora in loras)
            session.add_all(ImageLoraModel(image_id=model.id, name=name) for name in names)
            session.flush()
            return _rows(session, [model])[0]

    def add_many(self, records: Sequence[NewImage]) -> list[str]:
        """Store many records in one transaction with bulk inserts; returns their ids.

        For filling a gallery fast (imports, benchmarks): parents are not checked, so a
        `parent_id` must name an image of the same owner stored before or in this batch.
        """
        images: list[dict[str, Any]] = []
        tags: list[dict[str, str]] = []
        loras: list[dict[str, str]] = []
        for record in records:
            check_owner(record.owner)
            lora_json = [_lora_json(lora) for lora in record.loras]
            values = _values_from(record, lora_json)
            images.append(values)
            tags.extend({"image_id": values["id"], "tag": t} for t in _clean_tags(record.tags))
            names = dict.fromkeys(lora["name"] for lora in lora_json)
            loras.extend({"image_id": values["id"], "name": name} for name in names)
        with self._sessions.begin() as session:
            for table, rows in ((ImageModel, images), (TagModel, tags), (ImageLoraModel, loras)):
                if rows:
                    session.execute(insert(table), rows)
        return [values["id"] for values in images]

    def delete(self, owner: str, image_id: str) -> ImageRow:
        """Remove a record with its tags, LoRA names and board entries; children keep living
        with `parent_id` NULL. Returns the record so the caller can remove its objects.

        The record's object keys are left in `pending_deletions` in the same transaction;
        the caller calls `finish_deletions` once the objects are gone. Dependent rows are
        removed here as well as by the foreign keys, so an engine made without SQLite's
        `foreign_keys` pragma leaves nothing behind either."""
        with self._sessions.begin() as session:
            model = _find_image(session, check_owner(owner), image_id)
            row = _rows(session, [model])[0]
            session.execute(
                update(ImageModel).where(ImageModel.parent_id == image_id).values(parent_id=None)
            )
            for table in (TagModel, ImageLoraModel, BoardImageModel):
                session.execute(delete(table).where(table.image_id == image_id))
            session.execute(delete(ImageModel).where(ImageModel.id == image_id))
            for key in (row.object_key, row.thumbnail_key):
                if key and session.get(PendingDeletionModel, key) is None:
                    session.add(PendingDeletionModel(object_key=key, created_at=_utcnow()))
            return row

    def update(
        self,
        owner: str,
        image_id: str,
        *,
        favourite: bool | None = None,
        tags: Iterable[str] | None = None,
        board_ids: Iterable[str] | None = None,
    ) -> ImageRow:
        """Change what is given (None: unchanged) in one transaction: all or nothing.

        `tags` and `board_ids` replace the old lists; every board must be the owner's."""
        owner = check_owner(owner)
        cleaned = _clean_tags(tags) if tags is not None else None
        boards = list(dict.fromkeys(board_ids)) if board_ids is not None else None
        with self._sessions.begin() as session:
            model = _find_image(session, owner, image_id)
            if favourite is not None:
                model.favourite = bool(favourite)
            if cleaned is not None:
                session.execute(delete(TagModel).where(TagModel.image_id == model.id))
                session.add_all(TagModel(image_id=model.id, tag=tag) for tag in cleaned)
            if boards is not None:
                for board_id in boards:
                    _find_board(session, owner, board_id)
                session.execute(delete(BoardImageModel).where(BoardImageModel.image_id == model.id))
                session.add_all(BoardImageModel(board_id=b, image_id=model.id) for b in boards)
            session.flush()
            return _rows(session, [model])[0]

    # -- what reconcile needs (every owner: an operator's view)

    def stored_keys(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(id, owner, object key, thumbnail key) of every record, in batches."""
        with self._sessions() as session:
            query = select(
                ImageModel.id, ImageModel.owner, ImageModel.object_key, ImageModel.thumbnail_key
            ).execution_options(yield_per=1000)
            for row in session.execute(query):
                yield (row.id, row.owner, row.object_key, row.thumbnail_key)

    def pending_deletions(self) -> list[str]:
        """Object keys of deleted records whose objects may still exist."""
        with self._sessions() as session:
            return list(session.scalars(select(PendingDeletionModel.object_key)))

    def finish_deletions(self, keys: Iterable[str]) -> None:
        """Forget pending deletions whose objects are gone."""
        keys = [key for key in keys if key]
        if keys:
            with self._sessions.begin() as session:
                session.execute(
                    delete(PendingDeletionModel).where(PendingDeletionModel.object_key.in_(keys))
                )

    def exists(self, image_id: str) -> bool:
        """Whether a record with this id exists, whoever owns it (reconcile only)."""
        with self._sessions() as session:
            return session.get(ImageModel, image_id) is not None

    def find_by_sha256(self, owner: str, sha256: str) -> ImageRow | None:
        """The owner's oldest image with these exact bytes, if any (imports skip those)."""
        with self._sessions() as session:
            model = session.scalar(
                select(ImageModel)
                .where(ImageModel.owner == check_owner(owner), ImageModel.sha256 == sha256)
                .order_by(ImageModel.created_at)
                .limit(1)
            )
            return _rows(session, [model])[0] if model is not None else None

    def set_favourite(self, owner: str, image_id: str, favourite: bool) -> ImageRow:
        return self.update(owner, image_id, favourite=favourite)

    def set_thumbnail_key(self, owner: str, image_id: str, thumbnail_key: str | None) -> ImageRow:
        return self._update(owner, image_id, thumbnail_key=thumbnail_key)

    def set_tags(self, owner: str, image_id: str, tags: Iterable[str]) -> ImageRow:
        """Replace the image's tags with `tags`."""
        return self.update(owner, image_id, tags=tags)

    # -- reads

    def get(self, owner: str, image_id: str) -> ImageRow:
        with self._sessions() as session:
            model = _find_image(session, check_owner(owner), image_id)
            return _rows(session, [model])[0]

    def list(
        self,
        owner: str,
        *,
        cursor: str | None = None,
        limit: int = 50,
        model: str | None = None,
        lora: str | None = None,
        tag: str | None = None,
        favourite: bool | None = None,
        board_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        search: str | None = None,
    ) -> Page:
        """Newest first. `created_after` is inclusive, `created_before` exclusive; `model`
        matches the checkpoint's name or hash; `search` is full-text on the prompt (every
        word, as a word prefix: see `search.py`). Unknown filter values match nothing."""
        owner = check_owner(owner)
        limit = _check_limit(limit)
        if search is not None and len(search) > MAX_SEARCH_LENGTH:
            raise InvalidArgument("search", f"must be at most {MAX_SEARCH_LENGTH} characters")
        position = decode_cursor(cursor) if cursor else None
        query = select(ImageModel).where(ImageModel.owner == owner)
        with self._sessions() as session:
            if board_id is not None:
                _find_board(session, owner, board_id)
            dialect = session.get_bind().dialect.name
            broad = (
                dialect == "sqlite"
                and bool(search and search.strip())
                and fulltext.sqlite_match_count(session, search or "") > fulltext.BROAD_MATCHES
            )
            query = _filtered(
                query,
                dialect=dialect,
                broad_search=broad,
                model=model,
                lora=lora,
                tag=tag,
                favourite=favourite,
                board_id=board_id,
                created_after=created_after,
                created_before=created_before,
                search=search,
            )
            models = list(session.scalars(_page_query(query, position, limit)))
            rows = _rows(session, models[:limit])
        more = len(models) > limit
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return Page(tuple(rows), next_cursor)

    def lineage(
        self, owner: str, image_id: str
    ) -> tuple[tuple[ImageRow, ...], tuple[ImageRow, ...]]:
        """(ancestors nearest first, descendants breadth-first) of an image, each bounded
        to 100 generations."""
        owner = check_owner(owner)
        with self._sessions() as session:
            start = _find_image(session, owner, image_id)
            ancestors = _ancestors(session, owner, start)
            descendants = _descendants(session, owner, start)
            return tuple(_rows(session, ancestors)), tuple(_rows(session, descendants))

    # -- helpers

    def _update(self, owner: str, image_id: str, **values: Any) -> ImageRow:
        with self._sessions.begin() as session:
            model = _find_image(session, check_owner(owner), image_id)
            for name, value in values.items():
                setattr(model, name, value)
            session.flush()
            return _rows(session, [model])[0]


def _ancestors(session: Session, owner: str, start: ImageModel) -> list[ImageModel]:
    found: list[ImageModel] = []
    seen = {start.id}
    parent_id = start.parent_id
    while parent_id is not None and parent_id not in seen and len(found) < MAX_LINEAGE_DEPTH:
        parent = session.scalar(
            select(ImageModel).where(ImageModel.id == parent_id, ImageModel.owner == owner)
        )
        if parent is None:
            break
        found.append(parent)
        seen.add(parent.id)
        parent_id = parent.parent_id
    return found


def _descendants(session: Session, owner: str, start: ImageModel) -> list[ImageModel]:
    found: list[ImageModel] = []
    seen = {start.id}
    level = [start.id]
    for _ in range(MAX_LINEAGE_DEPTH):
        if not level:
            break
        children = [
            child
            for child in session.scalars(
                select(ImageModel)
                .where(ImageModel.parent_id.in_(level), ImageModel.owner == owner)
                .order_by(ImageModel.created_at, ImageModel.id)
            )
            if child.id not in seen
        ]
        seen.update(child.id for child in children)
        found.extend(children)
        level = [child.id for child in children]
    return found


def _rows(session: Session, models: Sequence[ImageModel]) -> list[ImageRow]:
    """Rows with their tags and boards, loaded in two queries for the whole batch."""
    ids = [model.id for model in models]
    tags: dict[str, list[str]] = {}
    boards: dict[str, list[str]] = {}
    if ids:
        for image_id, tag in session.execute(
            select(TagModel.image_id, TagModel.tag)
            .where(TagModel.image_id.in_(ids))
            .order_by(TagModel.tag)
        ):
            tags.setdefault(image_id, []).append(tag)
        for image_id, board_id in session.execute(
            select(BoardImageModel.image_id, BoardImageModel.board_id)
            .where(BoardImageModel.image_id.in_(ids))
            .order_by(BoardImageModel.board_id)
        ):
            boards.setdefault(image_id, []).append(board_id)
    return [
        _row_from(model, tuple(tags.get(model.id, ())), tuple(boards.get(model.id, ())))
        for model in models
    ]


def check_id(field: str, value: str) -> str:
    """`value` if it is an id this service makes (32 lowercase hex), else InvalidArgument."""
    if not _ID.match(value or ""):
        raise InvalidArgument(field, "must be 32 hexadecimal characters")
    return value


def _find_image(session: Session, owner: str, image_id: str) -> ImageModel:
    """The owner's image; another owner's id is NotFound exactly like a missing one."""
    check_id("image_id", image_id)
    model = session.scalar(
        select(ImageModel).where(ImageModel.id == image_id, ImageModel.owner == owner)
    )
    if model is None:
        raise NotFound("image", image_id)
    return model


def _find_board(session: Session, owner: str, board_id: str) -> BoardModel:
    check_id("board_id", board_id)
    board = session.scalar(
        select(BoardModel).where(BoardModel.id == board_id, BoardModel.owner == owner)
    )
    if board is None:
        raise NotFound("board", board_id)
    return board


def _filtered(
    query: Select[ImageModel],
    *,
    dialect: str,
    broad_search: bool,
    model: str | None,
    lora: str | None,
    tag: str | None,
    favourite: bool | None,
    board_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    search: str | None,
) -> Select[ImageModel]:
    if model:
        query = query.where(or_(ImageModel.model_name == model, ImageModel.model_hash == model))
    if lora:
        query = query.where(
            ImageModel.id.in_(select(ImageLoraModel.image_id).where(ImageLoraModel.name == lora))
        )
    if tag:
        query = query.where(
            ImageModel.id.in_(select(TagModel.image_id).where(TagModel.tag == tag.strip()))
        )
    if favourite is not None:
        query = query.where(ImageModel.favourite == favourite)
    if board_id is not None:
        query = query.where(
            ImageModel.id.in_(
                select(BoardImageModel.image_id).where(BoardImageModel.board_id == board_id)
            )
        )
    if created_after is not None:
        query = query.where(ImageModel.created_at >= created_after)
    if created_before is not None:
        query = query.where(ImageModel.created_at < created_before)
    if search and search.strip():
        query = query.where(
            fulltext.prompt_matches(
                dialect, ImageModel.id, ImageModel.prompt, search, broad=broad_search
            )
        )
    return query


def _page_query(
    query: Select[ImageModel], position: tuple[datetime, str] | None, limit: int
) -> Select[ImageModel]:
    """Keyset pagination on (created_at desc, id desc): one extra row tells if more follow."""
    if position is not None:
        created_at, image_id = position
        query = query.where(
            or_(
                ImageModel.created_at < created_at,
                and_(ImageModel.created_at == created_at, ImageModel.id < image_id),
            )
        )
    return query.order_by(ImageModel.created_at.desc(), ImageModel.id.desc()).limit(limit + 1)


def _model_from(record: NewImage, loras: list[dict[str, Any]]) -> ImageModel:
    return ImageModel(**_values_from(record, loras))


def _values_from(record: NewImage, loras: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        id=record.id or _new_id(),
        owner=record.owner,
        created_at=record.created_at or _utcnow(),
        request_id=record.request_id,
        object_key=record.object_key,
        thumbnail_key=record.thumbnail_key,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        width=record.width,
        height=record.height,
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        seed=record.seed,
        sampler=record.sampler,
        steps=record.steps,
        cfg_scale=record.cfg_scale,
        model_name=record.model_name,
        model_hash=record.model_hash,
        vae_name=record.vae_name,
        loras=loras,
        parent_id=record.parent_id,
        favourite=record.favourite,
        infotext=record.infotext,
        params=dict(record.params),
        generation=dict(record.generation) if record.generation is not None else None,
    )


def _row_from(model: ImageModel, tags: tuple[str, ...], board_ids: tuple[str, ...]) -> ImageRow:
    return ImageRow(
        id=model.id,
        owner=model.owner,
        created_at=model.created_at,
        request_id=model.request_id,
        object_key=model.object_key,
        thumbnail_key=model.thumbnail_key,
        sha256=model.sha256,
        size_bytes=model.size_bytes or 0,
        width=model.width,
        height=model.height,
        prompt=model.prompt,
        negative_prompt=model.negative_prompt,
        seed=model.seed,
        sampler=model.sampler,
        steps=model.steps,
        cfg_scale=model.cfg_scale,
        model_name=model.model_name,
        model_hash=model.model_hash,
        vae_name=model.vae_name,
        loras=tuple(LoraUse.from_json(lora) for lora in model.loras or ()),
        parent_id=model.parent_id,
        favourite=model.favourite,
        infotext=model.infotext,
        params=dict(model.params or {}),
        generation=model.generation,
        tags=tags,
        board_ids=board_ids,
    )


class BoardRecords:
    """Boards: named collections of one owner's images."""

    def __init__(self, source: Engine | sessionmaker[Session]) -> None:
        self._sessions = _sessions(source)

    def create(self, owner: str, name: str) -> BoardRow:
        owner = check_owner(owner)
        name = _check_board_name(name)
        with self._sessions.begin() as session:
            taken = session.scalar(
                select(BoardModel.id).where(BoardModel.owner == owner, BoardModel.name == name)
            )
            if taken is not None:
                raise AlreadyExists(f"board already exists: {name}")
            board = BoardModel(id=_new_id(), owner=owner, name=name, created_at=_utcnow())
            session.add(board)
            session.flush()
            return _board_row(board, 0)

    def list(self, owner: str) -> tuple[BoardRow, ...]:
        """The owner's boards by name, with how many images each holds."""
        owner = check_owner(owner)
        with self._sessions() as session:
            boards = list(
                session.scalars(
                    select(BoardModel).where(BoardModel.owner == owner).order_by(BoardModel.name)
                )
            )
            counts = _board_counts(session, [board.id for board in boards])
            return tuple(_board_row(board, counts.get(board.id, 0)) for board in boards)

    def rename(self, owner: str, board_id: str, name: str) -> BoardRow:
        """Give a board a new name, unique among the owner's boards."""
        owner = check_owner(owner)
        name = _check_board_name(name)
        with self._sessions.begin() as session:
            board = _find_board(session, owner, board_id)
            taken = session.scalar(
                select(BoardModel.id).where(
                    BoardModel.owner == owner, BoardModel.name == name, BoardModel.id != board_id
                )
            )
            if taken is not None:
                raise AlreadyExists(f"board already exists: {name}")
            board.name = name
            session.flush()
            return _board_row(board, _board_counts(session, [board.id]).get(board.id, 0))

    def delete(self, owner: str, board_id: str) -> BoardRow:
        """Remove a board; its images stay in the gallery."""
        with self._sessions.begin() as session:
            board = _find_board(session, check_owner(owner), board_id)
            row = _board_row(board, _board_counts(session, [board.id]).get(board.id, 0))
            session.execute(delete(BoardModel).where(BoardModel.id == board.id))
            return row

    def add_image(self, owner: str, board_id: str, image_id: str) -> None:
        """Put an image on a board (idempotent); both must be the owner's."""
        with self._sessions.begin() as session:
            owner = check_owner(owner)
            _find_board(session, owner, board_id)
            _find_image(session, owner, image_id)
            present = session.get(BoardImageModel, (board_id, image_id))
            if present is None:
                session.add(BoardImageModel(board_id=board_id, image_id=image_id))

    def remove_image(self, owner: str, board_id: str, image_id: str) -> None:
        with self._sessions.begin() as session:
            owner = check_owner(owner)
            _find_board(session, owner, board_id)
            _find_image(session, owner, image_id)
            session.execute(
                delete(BoardImageModel).where(
                    BoardImageModel.board_id == board_id, BoardImageModel.image_id == image_id
                )
            )


def _check_board_name(name: str) -> str:
    text = name.strip()
    if not text:
        raise InvalidArgument("name", "must not be empty")
    if len(text) > MAX_BOARD_NAME_LENGTH:
        raise InvalidArgument("name", f"must be at most {MAX_BOARD_NAME_LENGTH} characters")
    if _CONTROL.search(text):
        raise InvalidArgument("name", "must not contain control characters")
    return text


def _board_counts(session: Session, board_ids: Sequence[str]) -> dict[str, int]:
    if not board_ids:
        return {}
    rows = session.execute(
        select(BoardImageModel.board_id, func.count())
        .where(BoardImageModel.board_id.in_(board_ids))
        .group_by(BoardImageModel.board_id)
    )
    return {board_id: count for board_id, count in rows}


def _board_row(board: BoardModel, image_count: int) -> BoardRow:
    return BoardRow(board.id, board.owner, board.name, board.created_at, image_count)
