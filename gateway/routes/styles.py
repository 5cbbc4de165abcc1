"""Style presets: `GET /v1/styles`, `PUT/GET/DELETE /v1/styles/{name}`, and the preview.

A style is a LoRA with its weight and trigger words plus a prompt template; the generator
stores it as JSON beside the LoRAs (`styles/<name>.json` in the `loras` bucket).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from gateway.backends import Clients
from gateway.errors import ERROR_RESPONSES
from gateway.generation import decode_base64
from services.common.errors import NotFound
from services.common.generation.settings import NAME_PATTERN
from services.common.proto.sdstack.v1 import generator_pb2

router = APIRouter(prefix="/v1/styles", tags=["styles"], responses=ERROR_RESPONSES)

StyleName = Annotated[str, Path(pattern=NAME_PATTERN)]
MAX_PREVIEW_BASE64 = (1024 * 1024 + 2) // 3 * 4 + 64
_PREVIEW_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


class StyleIn(BaseModel):
    """A style preset; `{prompt}` in the template stands for the user's prompt."""

    title: str = Field("", max_length=100)
    category: str = Field("", max_length=64, description="e.g. architecture, interior.")
    lora: str = Field("", max_length=128, description="A LoRA from /v1/loras; '' for none.")
    weight: float = Field(1.0, ge=-4, le=4, allow_inf_nan=False)
    trigger_words: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    prompt_template: str = Field("{prompt}", max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    preview: str | None = Field(
        None, max_length=MAX_PREVIEW_BASE64, description="Base64 PNG, JPEG or WebP, ≤ 1 MiB."
    )

    model_config = {"extra": "forbid"}


class StyleOut(BaseModel):
    name: str
    title: str
    category: str
    lora: str | None
    weight: float
    trigger_words: list[str]
    prompt_template: str
    negative_prompt: str
    preview_url: str | None
    updated_at: datetime | None

    @classmethod
    def from_message(cls, style: generator_pb2.Style) -> StyleOut:
        return cls(
            name=style.name,
            title=style.title or style.name,
            category=style.category,
            lora=style.lora or None,
            weight=round(style.weight, 4) if style.HasField("weight") else 1.0,
            trigger_words=list(style.trigger_words),
            prompt_template=style.prompt_template or "{prompt}",
            negative_prompt=style.negative_prompt,
            preview_url=f"/v1/styles/{style.name}/preview" if style.has_preview else None,
            updated_at=style.updated_at.ToDatetime(tzinfo=UTC)
            if style.HasField("updated_at")
            else None,
        )


@router.get("", summary="Style presets, by name")
def list_styles(clients: Clients) -> list[StyleOut]:
    return [StyleOut.from_message(s) for s in clients.generator.list_styles()]


@router.get("/{name}", summary="One style preset")
def get_style(name: StyleName, clients: Clients) -> StyleOut:
    return StyleOut.from_message(clients.generator.get_style(name))


@router.put("/{name}", summary="Create or replace a style preset")
def put_style(name: StyleName, body: StyleIn, clients: Clients) -> StyleOut:
    style = generator_pb2.Style(
        name=name,
        title=body.title,
        category=body.category,
        lora=body.lora,
        weight=body.weight,
        trigger_words=body.trigger_words,
        prompt_template=body.prompt_template,
        negative_prompt=body.negative_prompt,
        preview=decode_base64(body.preview, "preview") if body.preview else b"",
    )
    return StyleOut.from_message(clients.generator.put_style(style))


@router.delete("/{name}", summary="Remove a style preset", status_code=204)
def delete_style(name: StyleName, clients: Clients) -> Response:
    if not clients.generator.delete_style(name):
        raise NotFound("style", name)
    return Response(status_code=204)


@router.get(
    "/{name}/preview",
    summary="The style's preview picture",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
def get_style_preview(name: StyleName, clients: Clients) -> Response:
    style = clients.generator.get_style(name)
    if not style.preview:
        raise NotFound("style preview", name)
    kind = next((t for magic, t in _PREVIEW_TYPES.items() if style.preview.startswith(magic)), "")
    return Response(style.preview, media_type=kind or "application/octet-stream")
