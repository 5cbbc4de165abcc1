"""The HTTP face of the one generation request: the body of `POST /v1/generations`.

The body is the request's `Settings` (flat, inherited, so every setting and its bounds
appear here by themselves), the task's fields (`mode`, `image`, `mask` and the option
groups) and how the job runs. `to_request` builds the `GenerationRequest` both edges check;
`from_request` writes a stored one back as a body, which the gallery answers as an image's
`params`: posting it makes the same image.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, model_validator

from gateway.generation import GenerationOrder, image_from_base64, image_from_gallery
from services.common.errors import FieldViolation, InvalidArgument
from services.common.generation import (
    TASKS,
    GenerationRequest,
    HiresOptions,
    ImageSource,
    Img2ImgOptions,
    InpaintOptions,
    Preview,
    Settings,
    UpscaleOptions,
    VariationOptions,
)
from services.common.generation.request import renamed, validated
from services.common.generation.settings import NAME_PATTERN
from services.common.generation.tasks import OPTION_GROUPS, Mode
from services.common.images import MAX_IMAGE_BYTES

MAX_BASE64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 256
MAX_TIMEOUT_SECONDS = 3600
TASK_FIELDS = ("image", "mask", *OPTION_GROUPS)
_JOB = GenerationRequest.model_fields


class ImageIn(BaseModel):
    """An image: base64 `data` (PNG, JPEG or WebP, ≤ 32 MiB) or the `image_id` of one of
    your gallery images. Exactly one of the two."""

    model_config = {"extra": "forbid"}

    data: str | None = Field(None, max_length=MAX_BASE64_CHARS)
    image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")

    @model_validator(mode="after")
    def _one_source(self) -> ImageIn:
        if (self.data is None) == (self.image_id is None):
            raise ValueError("give exactly one of data and image_id")
        return self

    def to_source(self, field_name: str, max_pixels: int) -> ImageSource:
        if self.image_id is not None:
            return image_from_gallery(self.image_id, f"{field_name}.image_id")
        return image_from_base64(self.data or "", f"{field_name}.data", max_pixels)


def http_name(path: str) -> str:
    """A domain path as this body names the field: `settings.width` → `width`."""
    return path.removeprefix("settings.").removeprefix("task.")


class GenerationCreate(Settings):
    """A generation request. Defaults follow the A1111 web UI."""

    mode: Mode = "txt2img"
    styles: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=8, description="Style presets from /v1/styles."
    )
    image: ImageIn | None = Field(None, description="Source image of every mode but txt2img.")
    mask: ImageIn | None = Field(None, description="inpaint: white = repaint, black = keep.")
    img2img: Img2ImgOptions | None = Field(None, description="img2img and inpaint.")
    inpaint: InpaintOptions | None = Field(None, description="inpaint.")
    hires: HiresOptions | None = Field(None, description="Hi-res fix (txt2img); off when null.")
    upscale: UpscaleOptions | None = Field(None, description="upscale.")
    variation: VariationOptions | None = Field(None, description="variation.")
    preview: Preview | None = Field(None, description="Previews in the event stream.")
    priority: int = _JOB["priority"]  # type: ignore[assignment]
    timeout_seconds: float | None = Field(None, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)
    stream: bool = Field(False, description="Answer with Server-Sent Events.")

    def to_order(self, owner: str, request_id: str, max_pixels: int) -> GenerationOrder:
        """The request, checked, as the gateway runs it."""
        request = GenerationRequest(
            settings=Settings.model_validate(self.model_dump(include=set(Settings.model_fields))),
            task=self._task(max_pixels),
            preview=self.preview,
            priority=self.priority,
            timeout_seconds=self.timeout_seconds,
        )
        try:
            request.check(max_pixels)
        except InvalidArgument as error:
            raise renamed(error, http_name) from None
        return GenerationOrder(
            owner=owner,
            request_id=request_id,
            request=request,
            label=self.mode,
            styles=tuple(self.styles),
            rename=http_name,
        )

    def _task(self, max_pixels: int) -> Any:
        model = TASKS[self.mode]
        unused = [
            FieldViolation(name, f"is not used by mode {self.mode}")
            for name in TASK_FIELDS
            if name not in model.model_fields and getattr(self, name) is not None
        ]
        if unused:
            raise InvalidArgument.many(unused)
        data: dict[str, Any] = {"mode": self.mode}
        for name in TASK_FIELDS:
            value = getattr(self, name)
            if isinstance(value, ImageIn):
                data[name] = value.to_source(name, max_pixels)
            elif value is not None:
                data[name] = value
            elif name in ("image", "mask") and name in model.model_fields:
                data[name] = ImageSource()
        return _validated_for_http(model, data)

    @classmethod
    def from_request(cls, request: GenerationRequest) -> GenerationCreate:
        """The body that asks for `request` again (its images by gallery id, when known)."""
        task = request.task
        data: dict[str, Any] = request.settings.model_dump() | {"mode": task.mode}
        for name in OPTION_GROUPS:
            if getattr(task, name, None) is not None:
                data[name] = getattr(task, name)
        image = getattr(task, "image", None)
        if isinstance(image, ImageSource) and image.image_id:
            data["image"] = ImageIn(image_id=image.image_id)
        return cls.model_validate(data)


def _validated_for_http(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return validated(model, data)
    except InvalidArgument as error:
        raise renamed(error, http_name) from None
