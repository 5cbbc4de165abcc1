"""Boards: `/v1/boards/...`, named collections of the caller's images.

Images go on and off boards with `PATCH /v1/images/{id}` (`board_ids`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from gateway.backends import Clients, Owner
from gateway.routes.images import ID_PATTERN
from services.common.proto.sdstack.v1 import gallery_pb2

router = APIRouter(prefix="/v1/boards", tags=["boards"])

BoardId = Annotated[str, Path(pattern=ID_PATTERN, description="32 hex characters")]


class BoardOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    image_count: int
    images_url: str = Field(description="The board's images: `GET /v1/images?board_id=…`.")

    @classmethod
    def from_message(cls, board: gallery_pb2.Board) -> BoardOut:
        return cls(
            id=board.id,
            name=board.name,
            created_at=board.created_at.ToDatetime(tzinfo=UTC),
            image_count=board.image_count,
            images_url=f"/v1/images?board_id={board.id}",
        )


class BoardList(BaseModel):
    boards: list[BoardOut] = Field(description="By name.")


class BoardName(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="Unique among your boards.")

    model_config = {"extra": "forbid"}


@router.get("", summary="The caller's boards, by name, with their image counts")
def list_boards(clients: Clients, who: Owner) -> BoardList:
    return BoardList(boards=[BoardOut.from_message(b) for b in clients.gallery.list_boards(who)])


@router.post("", status_code=201, summary="Create a board (409 when the name is taken)")
def create_board(body: BoardName, clients: Clients, who: Owner) -> BoardOut:
    return BoardOut.from_message(clients.gallery.create_board(who, body.name))


@router.patch("/{board_id}", summary="Rename a board")
def rename_board(board_id: BoardId, body: BoardName, clients: Clients, who: Owner) -> BoardOut:
    return BoardOut.from_message(clients.gallery.rename_board(who, board_id, body.name))


@router.delete("/{board_id}", status_code=204, summary="Delete a board (its images stay)")
def delete_board(board_id: BoardId, clients: Clients, who: Owner) -> Response:
    clients.gallery.delete_board(who, board_id)
    return Response(status_code=204)
