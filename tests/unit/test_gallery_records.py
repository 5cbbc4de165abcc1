"""Gallery records on SQLite and PostgreSQL: pagination, filters, full-text search, owner
isolation, lineage, tags, boards, updates, pending deletions and bulk inserts.

Every test taking `engine` runs once per backend (`database_url` in tests/postgres_fixtures.py).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import sessionmaker

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.sql import SQLITE_BUSY_TIMEOUT_MS, create_engine_for
from services.gallery.records import (
    BoardRecords,
    ImageRecords,
    ImageRow,
    LoraUse,
    NewImage,
    create_schema,
    decode_cursor,
    encode_cursor,
)

ALICE = "alice"
BOB = "bob"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def records(engine: Engine) -> ImageRecords:
    return ImageRecords(engine)


@pytest.fixture
def boards(engine: Engine) -> BoardRecords:
    return BoardRecords(engine)


def new_image(owner: str = ALICE, **overrides: object) -> NewImage:
    fields: dict[str, object] = {
        "owner": owner,
        "object_key": "outputs/x.png",
        "width": 512,
        "height": 512,
        "seed": 965400086,
        "steps": 20,
        "cfg_scale": 7.0,
        "prompt": "a house on a hill",
        "sampler": "Euler a",
        "model_name": "v1-5-pruned-emaonly",
        "model_hash": "6ce0161689",
    }
    fields.update(overrides)
    return NewImage(**fields)  # type: ignore[arg-type]


def add_many(records: ImageRecords, count: int, owner: str = ALICE) -> list[ImageRow]:
    """`count` images; every third shares its timestamp with the one before (ties on created_at)."""
    rows = []
    for index in range(count):
        stamp = T0 + timedelta(seconds=index - index % 3 // 2)
        rows.append(records.add(new_image(owner, created_at=stamp, prompt=f"prompt {index}")))
    return rows


def walk(records: ImageRecords, owner: str, limit: int, **filters: object) -> list[ImageRow]:
    """Every page of a listing, following next_cursor to the end."""
    seen: list[ImageRow] = []
    cursor = None
    for _ in range(1000):
        page = records.list(owner, cursor=cursor, limit=limit, **filters)  # type: ignore[arg-type]
        seen.extend(page.items)
        if page.next_cursor is None:
            return seen
        assert len(page.items) == limit
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


def newest_first(rows: list[ImageRow]) -> list[str]:
    return [row.id for row in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]


# --------------------------------------------------------------------------- engine and schema


def test_engine_creates_directory_and_sets_sqlite_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "db.sqlite"
    engine = create_engine_for(f"sqlite:///{path}")
    create_schema(engine)
    create_schema(engine)  # idempotent

    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS
    assert path.exists()
    tables = set(inspect(engine).get_table_names())
    assert {"images", "tags", "boards", "board_images"} <= tables
    indexes = {index["name"] for index in inspect(engine).get_indexes("images")}
    assert "ix_images_owner_created_id" in indexes
    engine.dispose()


def test_in_memory_sqlite_works_and_accepts_sessionmaker() -> None:
    engine = create_engine_for("sqlite://")
    create_schema(engine)
    records = ImageRecords(sessionmaker(engine))

    row = records.add(new_image())

    assert records.get(ALICE, row.id) == row


# --------------------------------------------------------------------------- add and get


def test_add_and_get_round_trip_every_field(records: ImageRecords) -> None:
    parent = records.add(new_image())
    row = records.add(
        new_image(
            request_id="req-1",
            object_key="outputs/alice/1.png",
            thumbnail_key="outputs/alice/1.webp",
            sha256="ab" * 32,
            width=768,
            height=512,
            prompt="a (house:1.2), hill",
            negative_prompt="blurry",
            seed=4294967294,
            sampler="DPM++ 2M Karras",
            steps=30,
            cfg_scale=6.5,
            vae_name="vae-ft-mse",
            loras=[LoraUse("archi", 0.8, "0123456789"), {"name": "wood", "weight": 0.5}],
            parent_id=parent.id,
            favourite=True,
            infotext="a (house:1.2), hill\nSteps: 30",
            params={"clip_skip": 2, "hires": {"scale": 2.0}},
            tags=["villa", " modern ", "villa"],
        )
    )

    got = records.get(ALICE, row.id)

    assert got == row
    assert len(got.id) == 32
    assert got.created_at.tzinfo is not None
    assert got.seed == 4294967294
    assert got.loras == (LoraUse("archi", 0.8, "0123456789"), LoraUse("wood", 0.5, ""))
    assert got.parent_id == parent.id
    assert got.tags == ("modern", "villa")
    assert got.params == {"clip_skip": 2, "hires": {"scale": 2.0}}
    assert (got.favourite, got.vae_name, got.thumbnail_key) == (
        True,
        "vae-ft-mse",
        row.thumbnail_key,
    )


def test_rows_are_frozen_dataclasses(records: ImageRecords) -> None:
    row = records.add(new_image())

    with pytest.raises(AttributeError):
        row.prompt = "changed"  # type: ignore[misc]


def test_created_at_is_kept_in_utc(records: ImageRecords) -> None:
    paris = datetime(2025, 6, 1, 14, 0, tzinfo=UTC).astimezone(datetime.now().astimezone().tzinfo)
    row = records.add(new_image(created_at=paris))

    assert records.get(ALICE, row.id).created_at == datetime(2025, 6, 1, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize("owner", ["", "   "])
def test_empty_owner_is_invalid(records: ImageRecords, owner: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.add(new_image(owner))
    assert caught.value.violations[0].field == "owner"

    with pytest.raises(InvalidArgument, match="owner"):
        records.list(owner, limit=10)


def test_parent_must_belong_to_owner(records: ImageRecords) -> None:
    bobs = records.add(new_image(BOB))

    with pytest.raises(NotFound):
        records.add(new_image(ALICE, parent_id=bobs.id))


# --------------------------------------------------------------------------- pagination


@pytest.mark.parametrize("limit", [1, 4, 7, 25, 200])
def test_pagination_walks_everything_newest_first(records: ImageRecords, limit: int) -> None:
    rows = add_many(records, 25)
    add_many(records, 5, owner=BOB)

    walked = walk(records, ALICE, limit)

    assert [row.id for row in walked] == newest_first(rows)
    assert len({row.id for row in walked}) == 25


def test_page_has_no_cursor_at_the_end(records: ImageRecords) -> None:
    add_many(records, 3)

    assert records.list(ALICE, limit=3).next_cursor is None
    first = records.list(ALICE, limit=2)
    assert first.next_cursor is not None
    assert records.list(ALICE, cursor=first.next_cursor, limit=2).next_cursor is None


def test_new_images_during_a_walk_do_not_shift_pages(records: ImageRecords) -> None:
    rows = add_many(records, 10)
    first = records.list(ALICE, limit=4)
    records.add(new_image(created_at=T0 + timedelta(days=1)))

    rest = walk_from(records, first.next_cursor)

    assert [row.id for row in (*first.items, *rest)] == newest_first(rows)


def walk_from(records: ImageRecords, cursor: str | None) -> list[ImageRow]:
    rows: list[ImageRow] = []
    while cursor is not None:
        page = records.list(ALICE, cursor=cursor, limit=4)
        rows.extend(page.items)
        cursor = page.next_cursor
    return rows


def test_empty_gallery(records: ImageRecords) -> None:
    page = records.list(ALICE, limit=10)

    assert page.items == ()
    assert page.next_cursor is None


@pytest.mark.parametrize("limit", [0, -1, 201, 10_000])
def test_limit_out_of_range_is_invalid(records: ImageRecords, limit: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.list(ALICE, limit=limit)

    assert caught.value.violations[0].field == "limit"
    assert caught.value.violations[0].rule == "must be between 1 and 200"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!not base64!!!",
        "abc",
        _b64(b"\xff\xfe\xfd"),
        _b64(b"no separator"),
        _b64(b"2025-01-01T00:00:00+00:00|not-hex-id-not-hex-id-not-hex-id"),
        _b64(b"not a date|" + b"a" * 32),
        _b64(b"2025-01-01T00:00:00|" + b"a" * 32),
        _b64(b"2025-01-01T00:00:00+00:00|abc"),
        _b64(b"2025-01-01T00:00:00+00:00|" + b"a" * 32 + b"|extra"),
    ],
)
def test_malformed_cursor_is_invalid(records: ImageRecords, cursor: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.list(ALICE, cursor=cursor, limit=10)

    assert caught.value.violations[0].field == "cursor"


def test_cursor_round_trip() -> None:
    stamp = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)

    assert decode_cursor(encode_cursor(stamp, "f" * 32)) == (stamp, "f" * 32)


# --------------------------------------------------------------------------- filters


def ids(rows: tuple[ImageRow, ...] | list[ImageRow]) -> set[str]:
    return {row.id for row in rows}


def test_filter_by_model_name_or_hash(records: ImageRecords) -> None:
    base = records.add(new_image())
    other = records.add(new_image(model_name="dreamshaper", model_hash="aaaaaaaaaa"))

    assert ids(walk(records, ALICE, 10, model="dreamshaper")) == {other.id}
    assert ids(walk(records, ALICE, 10, model="6ce0161689")) == {base.id}
    assert walk(records, ALICE, 10, model="unknown") == []


def test_filter_by_lora(records: ImageRecords) -> None:
    with_lora = records.add(new_image(loras=[LoraUse("archi", 0.8), LoraUse("wood", 0.3)]))
    records.add(new_image(loras=[LoraUse("anime", 1.0)]))
    records.add(new_image())

    assert ids(walk(records, ALICE, 10, lora="archi")) == {with_lora.id}
    assert ids(walk(records, ALICE, 10, lora="wood")) == {with_lora.id}
    assert walk(records, ALICE, 10, lora="arch") == []


def test_filter_by_tag(records: ImageRecords) -> None:
    tagged = records.add(new_image(tags=["villa", "night"]))
    records.add(new_image(tags=["castle"]))

    assert ids(walk(records, ALICE, 10, tag="villa")) == {tagged.id}
    assert walk(records, ALICE, 10, tag="vill") == []


def test_filter_by_favourite(records: ImageRecords) -> None:
    liked = records.add(new_image(favourite=True))
    plain = records.add(new_image())

    assert ids(walk(records, ALICE, 10, favourite=True)) == {liked.id}
    assert ids(walk(records, ALICE, 10, favourite=False)) == {plain.id}
    assert ids(walk(records, ALICE, 10)) == {liked.id, plain.id}


def test_filter_by_date_range(records: ImageRecords) -> None:
    rows = add_many(records, 9)
    after, before = T0 + timedelta(seconds=2), T0 + timedelta(seconds=6)

    walked = walk(records, ALICE, 2, created_after=after, created_before=before)

    expected = [row for row in rows if after <= row.created_at < before]
    assert [row.id for row in walked] == newest_first(expected)
    assert expected


def test_search_finds_every_word_case_insensitive(records: ImageRecords) -> None:
    villa = records.add(new_image(prompt="A Modern VILLA by the sea, (golden hour:1.2)"))
    castle = records.add(new_image(prompt="a castle by the sea"))
    records.add(new_image(prompt="a modern office"))

    assert ids(walk(records, ALICE, 10, search="villa")) == {villa.id}
    assert ids(walk(records, ALICE, 10, search="  modern villa ")) == {villa.id}
    assert ids(walk(records, ALICE, 10, search="villa modern")) == {villa.id}
    assert ids(walk(records, ALICE, 10, search="sea")) == {villa.id, castle.id}
    assert ids(walk(records, ALICE, 10, search="golden hour")) == {villa.id}
    assert walk(records, ALICE, 10, search="villa castle") == []


def test_search_matches_word_prefixes_not_inner_text(records: ImageRecords) -> None:
    houses = records.add(new_image(prompt="two timber houses"))
    records.add(new_image(prompt="a lighthouse"))

    assert ids(walk(records, ALICE, 10, search="hous")) == {houses.id}
    assert ids(walk(records, ALICE, 10, search="timb hou")) == {houses.id}


def test_search_ignores_punctuation_and_prompt_syntax(records: ImageRecords) -> None:
    percent = records.add(new_image(prompt="100% cotton, (linen:1.3), <lora:archi:0.8>"))
    records.add(new_image(prompt="snake_case"))

    assert ids(walk(records, ALICE, 10, search="100%")) == {percent.id}
    assert ids(walk(records, ALICE, 10, search="(linen)")) == {percent.id}
    assert ids(walk(records, ALICE, 10, search='cotton" OR "snake')) == set()
    assert ids(walk(records, ALICE, 10, search="archi")) == {percent.id}
    assert walk(records, ALICE, 10, search="%") == []
    assert walk(records, ALICE, 10, search="*") == []


def test_search_follows_prompt_changes_and_deletes(records: ImageRecords, engine: Engine) -> None:
    row = records.add(new_image(prompt="a red barn"))
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE images SET prompt = 'a blue barn' WHERE id = :id"), {"id": row.id}
        )

    assert walk(records, ALICE, 10, search="red") == []
    assert ids(walk(records, ALICE, 10, search="blue")) == {row.id}
    records.delete(ALICE, row.id)
    assert walk(records, ALICE, 10, search="barn") == []


def test_search_of_500_characters_is_the_limit(records: ImageRecords) -> None:
    records.add(new_image(prompt="word"))

    assert records.list(ALICE, limit=10, search="word " * 100).items != ()
    with pytest.raises(InvalidArgument) as caught:
        records.list(ALICE, limit=10, search="w" * 501)
    assert caught.value.violations[0].field == "search"


def test_filters_combine_with_pagination(records: ImageRecords) -> None:
    rows = [
        records.add(
            new_image(
                created_at=T0 + timedelta(seconds=i),
                favourite=i % 2 == 0,
                tags=["even"] if i % 2 == 0 else ["odd"],
                prompt=f"house {i}",
            )
        )
        for i in range(12)
    ]

    walked = walk(records, ALICE, 2, favourite=True, tag="even", search="house")

    assert [row.id for row in walked] == newest_first(rows[::2])


def test_filter_by_board(records: ImageRecords, boards: BoardRecords) -> None:
    board = boards.create(ALICE, "Villas")
    pinned = records.add(new_image())
    records.add(new_image())
    boards.add_image(ALICE, board.id, pinned.id)
    boards.add_image(ALICE, board.id, pinned.id)  # idempotent

    assert ids(walk(records, ALICE, 10, board_id=board.id)) == {pinned.id}
    assert records.get(ALICE, pinned.id).board_ids == (board.id,)
    assert [(b.name, b.image_count) for b in boards.list(ALICE)] == [("Villas", 1)]

    boards.remove_image(ALICE, board.id, pinned.id)
    assert walk(records, ALICE, 10, board_id=board.id) == []


def test_boards_are_private_and_unique_per_owner(
    records: ImageRecords, boards: BoardRecords
) -> None:
    board = boards.create(ALICE, "Villas")
    boards.create(BOB, "Villas")
    bobs_image = records.add(new_image(BOB))

    with pytest.raises(AlreadyExists):
        boards.create(ALICE, "Villas")
    with pytest.raises(NotFound):
        records.list(BOB, limit=10, board_id=board.id)
    with pytest.raises(NotFound):
        boards.add_image(ALICE, board.id, bobs_image.id)
    with pytest.raises(NotFound):
        boards.delete(BOB, board.id)
    assert [b.name for b in boards.list(BOB)] == ["Villas"]


def test_deleting_a_board_keeps_its_images(records: ImageRecords, boards: BoardRecords) -> None:
    board = boards.create(ALICE, "Tmp")
    image = records.add(new_image())
    boards.add_image(ALICE, board.id, image.id)

    assert boards.delete(ALICE, board.id).image_count == 1

    assert records.get(ALICE, image.id).board_ids == ()
    assert boards.list(ALICE) == ()


# --------------------------------------------------------------------------- owner isolation


def test_other_owners_image_is_not_found_like_a_missing_one(records: ImageRecords) -> None:
    bobs = records.add(new_image(BOB))
    missing = "0" * 32

    for call in (
        lambda image_id: records.get(ALICE, image_id),
        lambda image_id: records.delete(ALICE, image_id),
        lambda image_id: records.lineage(ALICE, image_id),
        lambda image_id: records.set_favourite(ALICE, image_id, True),
        lambda image_id: records.set_tags(ALICE, image_id, ["x"]),
        lambda image_id: records.set_thumbnail_key(ALICE, image_id, "t.webp"),
    ):
        with pytest.raises(NotFound) as for_bobs:
            call(bobs.id)
        with pytest.raises(NotFound) as for_missing:
            call(missing)
        assert type(for_bobs.value) is type(for_missing.value)
        assert (for_bobs.value.kind, for_bobs.value.status) == ("image", for_missing.value.status)
        assert for_bobs.value.message == f"image not found: {bobs.id}"

    assert records.get(BOB, bobs.id) == bobs


def test_other_owners_images_never_listed(records: ImageRecords) -> None:
    add_many(records, 4, owner=BOB)
    records.add(new_image(BOB, tags=["villa"], favourite=True, prompt="villa"))

    assert walk(records, ALICE, 3) == []
    assert walk(records, ALICE, 3, tag="villa") == []
    assert walk(records, ALICE, 3, search="villa") == []
    assert walk(records, ALICE, 3, favourite=True) == []
    assert len(walk(records, BOB, 3)) == 5


def test_bobs_cursor_does_not_reveal_bobs_images(records: ImageRecords) -> None:
    add_many(records, 4, owner=BOB)
    bobs_cursor = records.list(BOB, limit=1).next_cursor

    assert records.list(ALICE, cursor=bobs_cursor, limit=10).items == ()


# --------------------------------------------------------------------------- updates


def test_set_favourite_and_tags(records: ImageRecords) -> None:
    row = records.add(new_image(tags=["old"]))

    assert records.set_favourite(ALICE, row.id, True).favourite is True
    assert records.set_tags(ALICE, row.id, ["b", "a", "b"]).tags == ("a", "b")
    assert records.get(ALICE, row.id).tags == ("a", "b")
    assert records.set_tags(ALICE, row.id, []).tags == ()
    assert records.set_thumbnail_key(ALICE, row.id, "thumbs/x.webp").thumbnail_key == (
        "thumbs/x.webp"
    )


def test_invalid_tags_change_nothing(records: ImageRecords) -> None:
    row = records.add(new_image(tags=["keep"]))

    with pytest.raises(InvalidArgument, match="tags"):
        records.set_tags(ALICE, row.id, ["ok", " "])
    with pytest.raises(InvalidArgument, match="tags"):
        records.set_tags(ALICE, row.id, ["x" * 101])

    assert records.get(ALICE, row.id).tags == ("keep",)


# --------------------------------------------------------------------------- delete and lineage


def test_delete_returns_row_and_removes_it(records: ImageRecords, boards: BoardRecords) -> None:
    row = records.add(new_image(tags=["a"], loras=[LoraUse("archi")]))
    board = boards.create(ALICE, "B")
    boards.add_image(ALICE, board.id, row.id)

    deleted = records.delete(ALICE, row.id)

    assert deleted.id == row.id
    assert deleted.board_ids == (board.id,)
    with pytest.raises(NotFound):
        records.get(ALICE, row.id)
    assert walk(records, ALICE, 10, tag="a") == []
    assert walk(records, ALICE, 10, lora="archi") == []
    assert boards.list(ALICE)[0].image_count == 0


def test_deleting_a_parent_keeps_children_with_null_parent(records: ImageRecords) -> None:
    parent = records.add(new_image())
    children = [records.add(new_image(parent_id=parent.id)) for _ in range(2)]

    records.delete(ALICE, parent.id)

    for child in children:
        assert records.get(ALICE, child.id).parent_id is None


def test_foreign_key_sets_parent_null_in_the_database(
    records: ImageRecords, engine: Engine
) -> None:
    parent = records.add(new_image())
    child = records.add(new_image(parent_id=parent.id))

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM images WHERE id = :id"), {"id": parent.id})

    assert records.get(ALICE, child.id).parent_id is None


def test_lineage(records: ImageRecords) -> None:
    root = records.add(new_image(created_at=T0))
    middle = records.add(new_image(parent_id=root.id, created_at=T0 + timedelta(seconds=1)))
    leaf_a = records.add(new_image(parent_id=middle.id, created_at=T0 + timedelta(seconds=2)))
    leaf_b = records.add(new_image(parent_id=middle.id, created_at=T0 + timedelta(seconds=3)))
    grandchild = records.add(new_image(parent_id=leaf_a.id, created_at=T0 + timedelta(seconds=4)))
    records.add(new_image())

    ancestors, descendants = records.lineage(ALICE, leaf_a.id)
    assert [row.id for row in ancestors] == [middle.id, root.id]
    assert [row.id for row in descendants] == [grandchild.id]

    ancestors, descendants = records.lineage(ALICE, root.id)
    assert ancestors == ()
    assert [row.id for row in descendants] == [middle.id, leaf_a.id, leaf_b.id, grandchild.id]


@pytest.mark.parametrize(
    ("tags", "rule"),
    [
        (["x" * 65], "each tag must be at most 64 characters"),
        ([f"t{i}" for i in range(65)], "must be at most 64 tags"),
        (["ok", "  "], "must not contain empty tags"),
    ],
)
def test_tags_follow_the_contract_limits(records: ImageRecords, tags: list[str], rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.add(new_image(tags=tags))
    assert (caught.value.violations[0].field, caught.value.violations[0].rule) == ("tags", rule)
    assert records.list(ALICE, limit=10).items == ()


def test_owner_longer_than_the_contract_is_refused(records: ImageRecords) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.add(new_image(owner="o" * 129))
    assert caught.value.violations[0].field == "owner"


# --------------------------------------------------------------------------- update, boards


def test_update_changes_only_what_is_given(records: ImageRecords, boards: BoardRecords) -> None:
    first, second = boards.create(ALICE, "First"), boards.create(ALICE, "Second")
    row = records.add(new_image(tags=["old"]))

    updated = records.update(ALICE, row.id, favourite=True, board_ids=[second.id, first.id])
    assert (updated.favourite, updated.tags) == (True, ("old",))
    assert set(updated.board_ids) == {first.id, second.id}

    updated = records.update(ALICE, row.id, tags=["new"], board_ids=[first.id])
    assert (updated.favourite, updated.tags, updated.board_ids) == (True, ("new",), (first.id,))
    assert [(b.name, b.image_count) for b in boards.list(ALICE)] == [("First", 1), ("Second", 0)]
    assert records.update(ALICE, row.id, board_ids=[]).board_ids == ()


def test_update_is_all_or_nothing(records: ImageRecords, boards: BoardRecords) -> None:
    bobs_board = boards.create(BOB, "Bob's")
    row = records.add(new_image(tags=["keep"]))

    with pytest.raises(NotFound) as caught:
        records.update(ALICE, row.id, favourite=True, tags=["x"], board_ids=[bobs_board.id])
    assert caught.value.message == f"board not found: {bobs_board.id}"
    with pytest.raises(InvalidArgument):
        records.update(ALICE, row.id, favourite=True, tags=["x" * 65])

    unchanged = records.get(ALICE, row.id)
    assert (unchanged.favourite, unchanged.tags, unchanged.board_ids) == (False, ("keep",), ())


def test_rename_board(boards: BoardRecords, records: ImageRecords) -> None:
    board = boards.create(ALICE, "Villas")
    boards.create(ALICE, "Castles")
    image = records.add(new_image())
    boards.add_image(ALICE, board.id, image.id)

    renamed = boards.rename(ALICE, board.id, "  Modern villas ")
    assert (renamed.id, renamed.name, renamed.image_count) == (board.id, "Modern villas", 1)
    assert boards.rename(ALICE, board.id, "Modern villas").name == "Modern villas"
    with pytest.raises(AlreadyExists):
        boards.rename(ALICE, board.id, "Castles")
    with pytest.raises(NotFound) as caught:
        boards.rename(BOB, board.id, "Mine now")
    assert caught.value.message == f"board not found: {board.id}"
    with pytest.raises(InvalidArgument) as invalid:
        boards.rename(ALICE, board.id, "x" * 101)
    assert invalid.value.violations[0].field == "name"
    assert [b.name for b in boards.list(ALICE)] == ["Castles", "Modern villas"]


@pytest.mark.parametrize("owner", ["al ice", "alice/..", "ålice", "a\x00"])
def test_owner_outside_the_contract_alphabet_is_refused(records: ImageRecords, owner: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        records.list(owner, limit=10)
    assert caught.value.violations[0].field == "owner"


def test_other_owners_image_cannot_be_updated(records: ImageRecords) -> None:
    bobs = records.add(new_image(BOB))

    with pytest.raises(NotFound) as for_bobs:
        records.update(ALICE, bobs.id, favourite=True)
    with pytest.raises(NotFound) as for_missing:
        records.update(ALICE, "0" * 32, favourite=True)
    assert for_bobs.value.message.replace(bobs.id, "ID") == for_missing.value.message.replace(
        "0" * 32, "ID"
    )
    assert records.get(BOB, bobs.id).favourite is False


# --------------------------------------------------------------------------- reconcile support


def test_delete_leaves_pending_deletions_until_finished(records: ImageRecords) -> None:
    row = records.add(new_image(object_key="alice/a.png", thumbnail_key="alice/a.thumb.webp"))

    records.delete(ALICE, row.id)

    assert sorted(records.pending_deletions()) == ["alice/a.png", "alice/a.thumb.webp"]
    records.finish_deletions(["alice/a.png", "alice/a.thumb.webp"])
    assert records.pending_deletions() == []


def test_stored_keys_and_sha256_lookup(records: ImageRecords) -> None:
    a = records.add(new_image(object_key="alice/a.png", sha256="aa" * 32))
    b = records.add(new_image(BOB, object_key="bob/b.png", thumbnail_key="bob/b.webp"))

    assert sorted(records.stored_keys()) == sorted(
        [(a.id, ALICE, "alice/a.png", None), (b.id, BOB, "bob/b.png", "bob/b.webp")]
    )
    assert records.find_by_sha256(ALICE, "aa" * 32) == a
    assert records.find_by_sha256(BOB, "aa" * 32) is None
    assert records.exists(b.id) and not records.exists("0" * 32)


def test_add_many_is_listed_searched_and_filtered_like_add(records: ImageRecords) -> None:
    batch = [
        new_image(
            created_at=T0 + timedelta(seconds=i),
            prompt=f"tower {i}",
            tags=["tall"] if i % 2 else [],
            loras=[LoraUse("archi", 0.5)] if i % 3 == 0 else [],
        )
        for i in range(30)
    ]

    added = records.add_many(batch)

    assert len(added) == 30
    walked = walk(records, ALICE, 7)
    assert [row.id for row in walked] == list(reversed(added))
    assert ids(walk(records, ALICE, 10, search="tower")) == set(added)
    assert len(walk(records, ALICE, 10, tag="tall")) == 15
    assert len(walk(records, ALICE, 10, lora="archi")) == 10
    assert records.get(ALICE, added[3]).loras == (LoraUse("archi", 0.5),)


def test_search_with_many_matches_pages_like_any_listing(records: ImageRecords) -> None:
    """Over 1000 matches SQLite switches plans (search.BROAD_MATCHES): same results."""
    batch = [
        new_image(created_at=T0 + timedelta(seconds=i // 2), prompt=f"common word {i % 7}")
        for i in range(1100)
    ]
    added = records.add_many(batch)
    records.add_many([new_image(BOB, prompt="common word")] * 1)

    walked = walk(records, ALICE, 200, search="common")
    rows_by_id = {row.id: row for row in walked}
    assert [row.id for row in walked] == newest_first(list(rows_by_id.values()))
    assert set(rows_by_id) == set(added)
    assert len(walk(records, ALICE, 200, search="common 3")) == len(range(3, 1100, 7))
    assert ids(walk(records, ALICE, 200, search="common", tag="none")) == set()
