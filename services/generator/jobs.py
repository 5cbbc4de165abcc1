"""Generation jobs: a checked request, resolved for running.

`job_from_request` is the generator's edge (SPEC §9; gRPC is a public edge): the request is
built from protobuf by the one mapping and checked by the one `check()` of
`services.common.generation`, then resolved: the size decided, random seeds drawn, the
sampler's canonical name, the prompt's `<lora:…>` tags taken out. Images are decoded here
too, so a corrupt upload is refused before it waits in the queue.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from services.common.errors import FieldViolation, InvalidArgument
from services.common.generation import (
    MAX_SEED,
    GenerationRequest,
    Img2Img,
    Inpaint,
    LoraUse,
    Settings,
    Txt2Img,
    Upscale,
    Variation,
    extract_lora_tags,
)
from services.common.generation.proto import IMAGE_SLOTS, MASK_SLOT, grpc_name, request_from_proto
from services.common.generation.request import renamed
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.request_context import (
    current_request_id,
    is_valid_request_id,
    new_request_id,
)
from services.generator.samplers import resolve_sampler

ImageResolver = Callable[[common_pb2.ImageRef, str], Image.Image]
"""Turns an ImageRef into a decoded RGB image, raising InvalidArgument naming the field."""


@dataclass(frozen=True)
class GenerationJob:
    """What the engine runs. `request.settings` is resolved: its size, seeds and sampler
    are the ones used (its prompt as the user wrote it, tags included)."""

    request: GenerationRequest
    prompt: str
    """The prompt without its `<lora:…>` tags."""
    loras: tuple[LoraUse, ...]
    """The prompt's tags' LoRAs, then the request's list."""
    source: Image.Image | None = None
    mask: Image.Image | None = None

    @property
    def settings(self) -> Settings:
        return self.request.settings

    @property
    def task(self) -> Txt2Img | Img2Img | Inpaint | Upscale | Variation:
        return self.request.task

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def timeout_seconds(self) -> float | None:
        return self.request.timeout_seconds

    @property
    def width(self) -> int:
        return self.settings.width or 0

    @property
    def height(self) -> int:
        return self.settings.height or 0

    def seeds(self) -> list[int]:
        """A1111: image i of the job gets seed + i (variation seeds likewise)."""
        return [self.settings.seed + i for i in range(self.settings.image_count)]

    def subseeds(self) -> list[int]:
        return [self.settings.subseed + i for i in range(self.settings.image_count)]

    @property
    def total_steps(self) -> int:
        """Denoising steps the whole job runs, for progress and ETA."""
        task, steps = self.request.task, self.settings.steps
        if isinstance(task, Upscale):
            return 1
        per_image = steps
        if isinstance(task, Img2Img | Inpaint):
            per_image = max(1, math.ceil(steps * task.img2img.denoising_strength))
        if isinstance(task, Txt2Img) and task.hires is not None:
            per_image += task.hires.second_pass_steps or steps
        return per_image * self.settings.n_iter


def resolve_seed(seed: int) -> int:
    """-1 draws a random seed in [0, 4294967294], as A1111 does."""
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def job_from_request(
    message: generator_pb2.GenerateRequest,
    max_pixels: int,
    resolve_image: ImageResolver | None = None,
) -> GenerationJob:
    request = request_from_proto(message)
    mode = request.task.mode
    source = mask = None
    resolve = resolve_image or _no_images
    task = request.task
    if isinstance(task, Img2Img | Inpaint | Upscale | Variation) and task.image.given:
        source = _decoded(message, IMAGE_SLOTS[mode], resolve)
    if isinstance(task, Inpaint) and task.mask.given:
        mask = _decoded(message, MASK_SLOT, resolve).convert("L")
    broken = request.violations(max_pixels, source.size if source else None)
    broken.extend(_names(request))
    if broken:
        raise renamed(InvalidArgument.many(broken), lambda path: grpc_name(path, mode))
    prompt, tags = extract_lora_tags(request.settings.prompt)
    resolved = _resolved(request, source)
    loras = tuple(
        LoraUse(name=t.name, weight=t.unet_weight, text_encoder_weight=t.te_weight) for t in tags
    )
    return GenerationJob(resolved, prompt, loras + tuple(resolved.settings.loras), source, mask)


def _names(request: GenerationRequest) -> list[FieldViolation]:
    """Sampler names, checked against the generator's own table."""
    broken = []
    names = [("settings.sampler", request.settings.sampler)]
    if isinstance(request.task, Txt2Img) and request.task.hires and request.task.hires.sampler:
        names.append(("task.hires.sampler", request.task.hires.sampler))
    for path, name in names:
        try:
            resolve_sampler(name, path)
        except InvalidArgument as error:
            broken.extend(error.violations)
    return broken


def _resolved(request: GenerationRequest, source: Image.Image | None) -> GenerationRequest:
    s = request.settings
    width, height = request.size(source.size if source else None)
    settings = s.model_copy(
        update={
            "width": width,
            "height": height,
            "seed": resolve_seed(s.seed),
            "subseed": resolve_seed(s.subseed),
            "sampler": resolve_sampler(s.sampler).name,
        }
    )
    return request.model_copy(update={"settings": settings, "request_id": _request_id(request)})


def _request_id(request: GenerationRequest) -> str:
    """The client's id, else the call's x-request-id, else a new one."""
    request_id = request.request_id or current_request_id() or new_request_id()
    if not is_valid_request_id(request_id):
        raise InvalidArgument("request_id", "at most 64 of A-Z a-z 0-9 _ . -")
    return request_id


def _decoded(
    message: generator_pb2.GenerateRequest, slot: str, resolve: ImageResolver
) -> Image.Image:
    group, field = slot.split(".")
    return resolve(getattr(getattr(message, group), field), slot)


def _no_images(_ref: common_pb2.ImageRef, name: str) -> Image.Image:
    raise InvalidArgument(name, "images are not accepted here")
