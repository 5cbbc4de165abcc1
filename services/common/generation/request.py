"""One generation request: settings, task, and how the job runs. Checked once.

Every edge builds a `GenerationRequest` (the gateway from HTTP, the A1111 API from its
bodies, the generator from protobuf) and calls `check()`: single-field rules hold by
construction (pydantic), `check()` adds the rules that span fields or need the server's
pixel budget. Violations name domain paths (`settings.width`, `task.hires.scale`); each edge
renames them to its own field names (`params.width` on gRPC, `width` over HTTP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, TypeVar, get_args

from pydantic import BaseModel, Field, ValidationError

from services.common.errors import FieldViolation, InvalidArgument
from services.common.generation.lora_tags import extract_lora_tags
from services.common.generation.settings import (
    BATCH_PIXEL_FACTOR,
    DEFAULT_SIZE,
    MAX_LORAS,
    MAX_STEPS,
    Model,
    Settings,
    multiple_of_8,
)
from services.common.generation.tasks import (
    UPSCALE_PIXEL_FACTOR,
    ImageSource,
    Inpaint,
    Task,
    Txt2Img,
    Upscale,
)

PreviewMethod = Literal["Approx cheap", "TAESD", "Full"]
"""A1111's live preview types sdstack makes; the first is the default."""
PREVIEW_METHODS: tuple[str, ...] = get_args(PreviewMethod)
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.\-]{0,64}$"
MAX_PRIORITY = 10
M = TypeVar("M", bound=BaseModel)


class Preview(Model):
    """Cheap previews sent with progress events."""

    every_n_steps: int = Field(1, ge=1, le=MAX_STEPS)
    max_size: int = Field(256, ge=32, le=1024, description="Longest side in pixels.")
    method: PreviewMethod = Field(
        "Approx cheap",
        description="A1111's preview types: a free linear projection of the latents, a TAESD "
        "decoder's picture (needs a vae_approx model), or the VAE's decode of the current "
        "estimate (the picture as it would end now).",
    )


class GenerationRequest(Model):
    settings: Settings = Field(default_factory=Settings)
    task: Task = Field(default_factory=Txt2Img)
    preview: Preview | None = None
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")
    timeout_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    request_id: str = Field("", pattern=REQUEST_ID_PATTERN, description='"": a new id.')
    owner: str = Field("", max_length=128)

    def size(self, source: tuple[int, int] | None = None) -> tuple[int, int]:
        """The output size before any upscale: as asked, else the source image's on the
        latent grid, else 512²."""
        default = (DEFAULT_SIZE, DEFAULT_SIZE)
        if source is not None and not isinstance(self.task, Upscale):
            default = (multiple_of_8(source[0]), multiple_of_8(source[1]))
        return self.settings.width or default[0], self.settings.height or default[1]

    def check(self, max_pixels: int, source: tuple[int, int] | None = None) -> None:
        """Raises InvalidArgument naming every rule broken across fields; `source` is the
        source image's size where the caller has decoded it."""
        broken = self.violations(max_pixels, source)
        if broken:
            raise InvalidArgument.many(broken)

    def violations(
        self, max_pixels: int, source: tuple[int, int] | None = None
    ) -> list[FieldViolation]:
        s, task = self.settings, self.task
        width, height = self.size(source)
        broken = [
            FieldViolation(f"task.{name}", f"is required for mode {task.mode}")
            for name in ("image", "mask")
            if isinstance(getattr(task, name, None), ImageSource) and not getattr(task, name).given
        ]
        if not isinstance(task, Upscale):
            if width * height > max_pixels:
                rule = f"width×height must be at most {max_pixels} pixels"
                broken.append(FieldViolation("settings.height", rule))
            if s.batch_size * width * height > BATCH_PIXEL_FACTOR * max_pixels:
                rule = f"batch_size×width×height must be at most {BATCH_PIXEL_FACTOR * max_pixels}"
                broken.append(FieldViolation("settings.batch_size", rule + " pixels"))
        if isinstance(task, Txt2Img) and task.hires is not None:
            w, h = task.hires.target_size(width, height)
            if w * h > max_pixels:
                rule = f"the result must be at most {max_pixels} pixels"
                broken.append(FieldViolation("task.hires.scale", rule))
        if isinstance(task, Inpaint) and task.img2img.resize_mode == "latent_upscale":
            rule = "inpaint fits the image by just_resize, crop_and_resize or resize_and_fill"
            broken.append(FieldViolation("task.img2img.resize_mode", rule))
        if isinstance(task, Upscale) and source is not None:
            pixels = source[0] * source[1] * task.upscale.scale**2
            if pixels > UPSCALE_PIXEL_FACTOR * max_pixels:
                rule = f"the result must be at most {UPSCALE_PIXEL_FACTOR * max_pixels} pixels"
                broken.append(FieldViolation("task.upscale.scale", rule))
        try:
            tags = extract_lora_tags(s.prompt)[1]
        except InvalidArgument as error:
            tags = []
            broken.extend(error.violations)
        if len(tags) + len(s.loras) > MAX_LORAS:
            broken.append(FieldViolation("settings.loras", f"at most {MAX_LORAS} LoRAs"))
        return broken


Renamer = Callable[[str], str]
"""A domain path (`settings.width`) → the edge's name of the field (`params.width`)."""


def validated(model: type[M], data: object, path: str = "") -> M:
    """`model` built from `data`; InvalidArgument naming each broken field under `path`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidArgument.many(list(violations_of(error, path))) from None


def violations_of(error: ValidationError, path: str = "") -> Iterable[FieldViolation]:
    for item in error.errors():
        parts = [path, *(str(part) for part in item["loc"])]
        yield FieldViolation(".".join(p for p in parts if p) or "body", item["msg"])


def renamed(error: InvalidArgument, rename: Renamer) -> InvalidArgument:
    """The same violations under the edge's field names."""
    return InvalidArgument.many([FieldViolation(rename(v.field), v.rule) for v in error.violations])
