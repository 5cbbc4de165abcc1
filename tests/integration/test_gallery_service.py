"""The gallery over gRPC on a real socket, with the real local S3 and SQLite or PostgreSQL
(each test runs on both): every query, updates, boards, files and URLs, imports, the
isolation rule, bad input, and the facade never leaving an object without its record."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from PIL import Image

from services.common.errors import RemoteError, Unavailable
from services.common.infotext import read_png_infotext
from services.common.object_store import ObjectStore
from services.common.proto.sdstack.v1 import common_pb2, gallery_pb2, generator_pb2
from services.gallery.images import Images, ImageSettings
from services.gallery.records import ImageRecords
from tests.gallery_support import (
    MAX_PIXELS,
    GalleryService,
    a1111_png,
    plain_png,
    serve_gallery,
)

pytestmark = pytest.mark.integration

ALICE, BOB = "alice", "bob"


@pytest.fixture
def gallery(object_store: ObjectStore, database_url: str) -> Iterator[GalleryService]:
    with serve_gallery(object_store, database_url) as service:
        yield service


def create(
    gallery: GalleryService, owner: str = ALICE, png: bytes | None = None, **fields: object
) -> gallery_pb2.Image:
    request = gallery_pb2.CreateImageRequest(
        owner=owner, png=a1111_png() if png is None else png, **fields
    )
    return gallery.client.create_image(request)


def listing(gallery: GalleryService, owner: str = ALICE, limit: int = 3, **filters: object):
    """Every page of a listing through gRPC, following next_cursor."""
    found: list[gallery_pb2.Image] = []
    cursor = ""
    while True:
        request = gallery_pb2.ListImagesRequest(
            owner=owner, cursor=cursor, limit=limit, filter=gallery_pb2.ImageFilter(**filters)
        )
        page = gallery.client.list_images(request)
        found.extend(page.images)
        if not page.next_cursor:
            return [image.id for image in found]
        assert len(page.images) == limit
        cursor = page.next_cursor


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def error_of(call) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------- create and read


def test_create_stores_png_thumbnail_and_record_with_parsed_parameters(
    gallery: GalleryService,
) -> None:
    png = a1111_png(
        "a villa, <lora:archi:0.8>",
        seed=42,
        size=(640, 320),
        **{"Lora hashes": "archi: 0123456789", "Clip skip": 2, "Tiling": True},
    )
    image = create(gallery, png=png, request_id="req-1", tags=["villa"])

    got = gallery.client.get_image(ALICE, image.id)
    assert got == image
    assert (got.prompt, got.negative_prompt, got.seed, got.sampler, got.steps) == (
        "a villa, <lora:archi:0.8>",
        "blurry",
        42,
        "Euler a",
        20,
    )
    assert (got.cfg_scale, got.model, got.model_hash, got.width, got.height) == (
        7.0,
        "v1-5-pruned-emaonly",
        "6ce0161689",
        640,
        320,
    )
    assert [(lora.name, lora.weight, lora.short_hash) for lora in got.loras] == [
        ("archi", pytest.approx(0.8), "0123456789")
    ]
    assert (got.request_id, list(got.tags), got.size_bytes) == ("req-1", ["villa"], len(png))
    # What made it, read from the infotext: the prompt as encoded, its tag's LoRA in loras.
    used = got.generation.params
    assert used.prompt == "a villa, " and used.clip_skip == 2 and used.tiling
    assert used.seed == 42 and used.width == 640
    assert [(lora.name, lora.short_hash) for lora in used.loras] == [("archi", "0123456789")]

    content_type, chunks = gallery.client.image_file(ALICE, image.id)
    assert (content_type, b"".join(chunks)) == ("image/png", png)
    assert read_png_infotext(png) == got.infotext
    assert gallery.object_keys() == [f"alice/{image.id}.png", f"alice/{image.id}.thumb.webp"]

    content_type, chunks = gallery.client.image_file(
        ALICE, image.id, gallery_pb2.FILE_VARIANT_THUMBNAIL
    )
    thumbnail = Image.open(io.BytesIO(b"".join(chunks)))
    assert (content_type, thumbnail.format, thumbnail.size) == ("image/webp", "WEBP", (256, 128))


def test_thumbnail_is_made_once_on_write(gallery: GalleryService) -> None:
    image = create(gallery)
    key = f"alice/{image.id}.thumb.webp"
    written = gallery.store.stat(gallery.bucket, key)

    for _ in range(2):
        gallery.client.image_file(ALICE, image.id, gallery_pb2.FILE_VARIANT_THUMBNAIL)

    assert gallery.store.stat(gallery.bucket, key).etag == written.etag
    assert gallery.object_keys() == [f"alice/{image.id}.png", key]


def test_what_the_caller_says_made_it_wins_over_the_infotext(gallery: GalleryService) -> None:
    """The generator's resolved request is the record, returned as it was stored; the
    infotext only fills what the request does not say (the model hash)."""
    generation = generator_pb2.GenerateRequest(
        mode=generator_pb2.GENERATION_MODE_TXT2IMG,
        params=common_pb2.GenerationParams(
            prompt="from the request", seed=7, model="dreamshaper", vae="vae-ft-mse", eta=0.3
        ),
        hires={"enabled": True, "scale": 1.5, "upscaler": "Lanczos"},
    )
    image = create(gallery, generation=generation)

    assert (image.prompt, image.seed, image.model, image.model_hash, image.vae) == (
        "from the request",
        7,
        "dreamshaper",
        "6ce0161689",
        "vae-ft-mse",
    )
    assert image.negative_prompt == ""  # as the request says, not the infotext's "blurry"
    got = gallery.client.get_image(ALICE, image.id).generation
    assert got.params.eta == pytest.approx(0.3) and got.hires.enabled and got.hires.scale == 1.5
    assert got.hires.upscaler == "Lanczos" and got.params.prompt == "from the request"


# --------------------------------------------------------------------------- queries


def test_list_is_newest_first_with_cursor_pagination(gallery: GalleryService) -> None:
    made = [create(gallery).id for _ in range(7)]
    create(gallery, BOB)

    assert listing(gallery, limit=3) == list(reversed(made))
    assert listing(gallery, limit=200) == list(reversed(made))
    first = gallery.client.list_images(gallery_pb2.ListImagesRequest(owner=ALICE))
    assert len(first.images) == 7 and first.next_cursor == ""  # default page size 50


def test_every_filter(gallery: GalleryService) -> None:
    villa = create(gallery, png=a1111_png("a modern villa, <lora:archi:0.7>", model="dream"))
    castle = create(gallery, png=a1111_png("an old castle by the sea"), tags=["stone"])
    barn = create(gallery, png=a1111_png("a red barn by the sea"), tags=["stone", "farm"])
    board = gallery.client.create_board(ALICE, "Sea")
    gallery.client.update_image(ALICE, barn.id, favourite=True, board_ids=[board.id])
    gallery.client.update_image(ALICE, castle.id, board_ids=[board.id])

    assert listing(gallery, model="dream") == [villa.id]
    assert listing(gallery, model="6ce0161689") == [barn.id, castle.id, villa.id]
    assert listing(gallery, lora="archi") == [villa.id]
    assert listing(gallery, tag="stone") == [barn.id, castle.id]
    assert listing(gallery, board_id=board.id) == [barn.id, castle.id]
    assert listing(gallery, favourite=True) == [barn.id]
    assert listing(gallery, favourite=False) == [castle.id, villa.id]
    assert listing(gallery, query="sea") == [barn.id, castle.id]
    assert listing(gallery, query="RED Sea") == [barn.id]
    assert listing(gallery, query="sea", tag="farm", favourite=True) == [barn.id]
    assert listing(gallery, lora="nothing") == []

    castle_at = castle.created_at.ToDatetime(tzinfo=UTC)
    after, before = stamp(castle_at), stamp(castle_at + timedelta(microseconds=1))
    assert listing(gallery, created_after=after, created_before=before) == [castle.id]
    assert listing(gallery, created_before=after) == [villa.id]
    assert listing(gallery, created_after=after) == [barn.id, castle.id]


def test_lineage_and_delete_keep_children(gallery: GalleryService) -> None:
    root = create(gallery)
    middle = create(gallery, parent_image_id=root.id)
    leaf = create(gallery, parent_image_id=middle.id)
    sibling = create(gallery, parent_image_id=root.id)

    lineage = gallery.client.lineage(ALICE, middle.id)
    assert [i.id for i in lineage.ancestors] == [root.id]
    assert [i.id for i in lineage.descendants] == [leaf.id]
    lineage = gallery.client.lineage(ALICE, root.id)
    assert [i.id for i in lineage.descendants] == [middle.id, sibling.id, leaf.id]

    gallery.client.delete_image(ALICE, middle.id)

    assert gallery.client.get_image(ALICE, leaf.id).parent_image_id == ""
    assert f"alice/{middle.id}.png" not in gallery.object_keys()
    assert f"alice/{middle.id}.thumb.webp" not in gallery.object_keys()
    assert gallery.images.records.pending_deletions() == []
    assert error_of(lambda: gallery.client.get_image(ALICE, middle.id)).status == (
        grpc.StatusCode.NOT_FOUND
    )
    assert [i.id for i in gallery.client.lineage(ALICE, root.id).descendants] == [sibling.id]


# --------------------------------------------------------------------------- updates and boards


def test_update_favourite_tags_and_boards(gallery: GalleryService) -> None:
    image = create(gallery, tags=["old"])
    board = gallery.client.create_board(ALICE, "Picks")

    updated = gallery.client.update_image(ALICE, image.id, favourite=True)
    assert (updated.favourite, list(updated.tags)) == (True, ["old"])
    updated = gallery.client.update_image(ALICE, image.id, tags=["a", "b"], board_ids=[board.id])
    assert (updated.favourite, list(updated.tags), list(updated.board_ids)) == (
        True,
        ["a", "b"],
        [board.id],
    )
    assert gallery.client.list_boards(ALICE)[0].image_count == 1
    assert gallery.client.update_image(ALICE, image.id, favourite=False).favourite is False


def test_update_needs_a_known_mask(gallery: GalleryService) -> None:
    image = create(gallery)
    client = gallery.client
    for paths in ([], ["prompt"]):
        request = gallery_pb2.UpdateImageRequest(owner=ALICE, image_id=image.id)
        request.update_mask.paths.extend(paths)
        error = error_of(lambda request=request: client._call(client.stub.UpdateImage, request))
        assert error.status == grpc.StatusCode.INVALID_ARGUMENT
        assert error.violations[0].field == "update_mask"


def test_boards_crud(gallery: GalleryService) -> None:
    board = gallery.client.create_board(ALICE, "Villas")
    other = gallery.client.create_board(ALICE, "Castles")
    image = create(gallery)
    gallery.client.update_image(ALICE, image.id, board_ids=[board.id, other.id])

    assert error_of(lambda: gallery.client.create_board(ALICE, "Villas")).status == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    renamed = gallery.client.rename_board(ALICE, board.id, "Modern villas")
    assert (renamed.id, renamed.name, renamed.image_count) == (board.id, "Modern villas", 1)
    assert [b.name for b in gallery.client.list_boards(ALICE)] == ["Castles", "Modern villas"]

    gallery.client.delete_board(ALICE, board.id)

    assert [b.name for b in gallery.client.list_boards(ALICE)] == ["Castles"]
    assert list(gallery.client.get_image(ALICE, image.id).board_ids) == [other.id]
    assert gallery.client.list_boards(BOB) == []


# --------------------------------------------------------------------------- URLs


def test_presigned_url_serves_the_file_then_expires(gallery: GalleryService) -> None:
    png = a1111_png()
    image = create(gallery, png=png)

    reply = gallery.client.get_image_url(ALICE, image.id, expires_in=timedelta(seconds=2))
    assert httpx.get(reply.url).content == png
    expires_at = reply.expires_at.ToDatetime(tzinfo=UTC)
    assert timedelta(0) < expires_at - datetime.now(UTC) <= timedelta(seconds=2)
    thumb = gallery.client.get_image_url(ALICE, image.id, gallery_pb2.FILE_VARIANT_THUMBNAIL)
    assert httpx.get(thumb.url).headers["content-type"] == "image/webp"

    time.sleep(3.5)
    assert httpx.get(reply.url).status_code == 403


@pytest.mark.parametrize("expires_in", [timedelta(0), timedelta(days=8)])
def test_url_expiry_out_of_range_is_refused(gallery: GalleryService, expires_in: timedelta) -> None:
    image = create(gallery)
    error = error_of(lambda: gallery.client.get_image_url(ALICE, image.id, expires_in=expires_in))
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == "expires_in"


# --------------------------------------------------------------------------- isolation


def test_another_owners_image_behaves_exactly_like_a_missing_one(gallery: GalleryService) -> None:
    """Alice asks for Bob's image, then for the same id once it no longer exists: every
    call must answer the same status and the same message both times."""
    bobs = create(gallery, BOB)
    board = gallery.client.create_board(ALICE, "Mine")
    client = gallery.client
    calls = {
        "GetImage": lambda: client.get_image(ALICE, bobs.id),
        "GetImageFile": lambda: client.image_file(ALICE, bobs.id),
        "GetImageUrl": lambda: client.get_image_url(ALICE, bobs.id),
        "UpdateImage": lambda: client.update_image(ALICE, bobs.id, favourite=True),
        "DeleteImage": lambda: client.delete_image(ALICE, bobs.id),
        "GetLineage": lambda: client.lineage(ALICE, bobs.id),
        "CreateImage(parent)": lambda: create(gallery, ALICE, parent_image_id=bobs.id),
    }
    while_bobs = {name: error_of(call) for name, call in calls.items()}
    assert client.get_image(BOB, bobs.id).favourite is False  # nothing changed for Bob
    client.delete_image(BOB, bobs.id)
    once_missing = {name: error_of(call) for name, call in calls.items()}

    for name in calls:
        assert while_bobs[name].status == grpc.StatusCode.NOT_FOUND, name
        assert while_bobs[name].message == once_missing[name].message, name
        assert while_bobs[name].message == f"image not found: {bobs.id}", name
    assert gallery.object_keys() == []  # Alice's failed create left nothing behind
    assert [b.id for b in client.list_boards(ALICE)] == [board.id]


def test_another_owners_board_behaves_like_a_missing_one(gallery: GalleryService) -> None:
    bobs_board = gallery.client.create_board(BOB, "Bob's")
    image = create(gallery)
    client = gallery.client
    calls = {
        "ListImages": lambda: listing(gallery, board_id=bobs_board.id),
        "RenameBoard": lambda: client.rename_board(ALICE, bobs_board.id, "x"),
        "DeleteBoard": lambda: client.delete_board(ALICE, bobs_board.id),
        "UpdateImage": lambda: client.update_image(ALICE, image.id, board_ids=[bobs_board.id]),
    }
    while_bobs = {name: error_of(call) for name, call in calls.items()}
    client.delete_board(BOB, bobs_board.id)
    once_missing = {name: error_of(call) for name, call in calls.items()}

    for name in calls:
        assert while_bobs[name].status == grpc.StatusCode.NOT_FOUND, name
        assert while_bobs[name].message == once_missing[name].message, name


def test_listing_and_search_never_show_another_owners_images(gallery: GalleryService) -> None:
    create(gallery, BOB, png=a1111_png("bob's secret tower"), tags=["secret"])

    assert listing(gallery) == []
    assert listing(gallery, query="secret tower") == []
    assert listing(gallery, tag="secret") == []
    assert len(listing(gallery, BOB)) == 1


# --------------------------------------------------------------------------- import


def test_import_makes_records_of_a1111_pngs_and_skips_the_rest(gallery: GalleryService) -> None:
    old = datetime(2023, 5, 1, 10, 0, tzinfo=UTC)
    good = a1111_png("an imported cabin", seed=3)
    files = [
        gallery_pb2.ImportImagesRequest(filename="00001.png", png=good, modified_at=stamp(old)),
        gallery_pb2.ImportImagesRequest(filename="plain.png", png=plain_png()),
        gallery_pb2.ImportImagesRequest(filename="notes.txt", png=b"not a png"),
        gallery_pb2.ImportImagesRequest(filename="copy.png", png=good),
    ]

    reply = gallery.client.import_images(ALICE, files)

    [imported] = reply.imported
    assert (imported.prompt, imported.seed, imported.model) == (
        "an imported cabin",
        3,
        "v1-5-pruned-emaonly",
    )
    assert imported.created_at.ToDatetime(tzinfo=UTC) == old
    assert {(s.field, s.rule) for s in reply.skipped} == {
        ("plain.png", "has no A1111 `parameters` chunk"),
        ("notes.txt", "not a PNG image"),
        ("copy.png", f"is already in the gallery as {imported.id}"),
    }
    assert listing(gallery, query="cabin") == [imported.id]
    assert gallery.client.import_images(BOB, files[:1]).imported[0].owner == BOB


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gallery_pb2.ListImagesRequest(owner=""), "owner"),
        (gallery_pb2.ListImagesRequest(owner="al/ice"), "owner"),
        (gallery_pb2.ListImagesRequest(owner=ALICE, limit=201), "limit"),
        (gallery_pb2.ListImagesRequest(owner=ALICE, cursor="garbage"), "cursor"),
        (
            gallery_pb2.ListImagesRequest(
                owner=ALICE, filter=gallery_pb2.ImageFilter(query="x" * 501)
            ),
            "search",
        ),
        (
            gallery_pb2.ListImagesRequest(
                owner=ALICE, filter=gallery_pb2.ImageFilter(board_id="../x")
            ),
            "board_id",
        ),
    ],
)
def test_bad_list_requests_name_the_field(
    gallery: GalleryService, request_: gallery_pb2.ListImagesRequest, field: str
) -> None:
    error = error_of(lambda: gallery.client.list_images(request_))
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == field


@pytest.mark.parametrize(
    ("png", "rule"),
    [
        (b"", "must not be empty"),
        (b"GIF89a....", "not a PNG image"),
        (a1111_png()[:200], "not a PNG image"),
    ],
)
def test_bad_pngs_are_refused_and_nothing_is_stored(
    gallery: GalleryService, png: bytes, rule: str
) -> None:
    error = error_of(lambda: create(gallery, png=png))
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.violations[0].field, error.violations[0].rule) == ("png", rule)
    assert gallery.object_keys() == []


def test_malformed_ids_are_invalid(gallery: GalleryService) -> None:
    error = error_of(lambda: gallery.client.get_image(ALICE, "x" * 10_000))
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == "image_id"


def test_a_failed_record_write_removes_the_objects(gallery: GalleryService) -> None:
    error = error_of(lambda: create(gallery, tags=[f"t{i}" for i in range(65)]))

    assert error.violations[0].field == "tags"
    assert gallery.object_keys() == []
    assert listing(gallery) == []


def test_a_failed_object_write_leaves_no_record(gallery: GalleryService) -> None:
    unreachable = ObjectStore("127.0.0.1:9", "key", "secret-key")
    images = Images(
        unreachable,
        ImageRecords(gallery.engine),
        max_pixels=MAX_PIXELS,
        bucket=gallery.bucket,
    )

    with pytest.raises(Unavailable):
        images.create(ALICE, a1111_png(), ImageSettings())

    assert listing(gallery) == []
