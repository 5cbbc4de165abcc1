"""Validated generation jobs: what the engine runs, with every default filled in.

`job_from_request` is the generator's edge check (SPEC §9): each broken rule becomes an
`InvalidArgument` naming the field, before anything is queued.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from services.common.errors import FieldViolation, InvalidArgument, Unimplemented
from services.common.proto.sdstack.v1 import generator_pb2
from services.common.request_context import current_request_id, is_valid_request_id, new_request_id
from services.generator.samplers import DEFAULT_SAMPLER, resolve_sampler, resolve_schedule_type

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 4_294_967_294
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SIZE = 512


@dataclass(frozen=True)
class Txt2ImgJob:
    request_id: str
    owner: str
    prompt: str
    negative_prompt: str
    model: str
    sampler: str
    schedule_type: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    batch_size: int
    n_iter: int
    clip_skip: int
    priority: int = 0
    preview_every: int = 0
    loras: tuple[str, ...] = field(default_factory=tuple)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def seeds(self) -> list[int]:
        """A1111: image i of the job gets seed + i."""
        return [self.seed + i for i in range(self.image_count)]


class _Checker:
    """Collects every violation so the client hears about all of them at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def require(self, ok: bool, field_name: str, rule: str) -> None:
        if not ok:
            self.violations.append(FieldViolation(field_name, rule))

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument.many(self.violations)


def _check_size(check: _Checker, name: str, value: int) -> None:
    check.require(64 <= value <= 2048, f"params.{name}", "must be between 64 and 2048")
    check.require(value % 8 == 0, f"params.{name}", "must be a multiple of 8")


def resolve_seed(seed: int | None) -> int:
    """-1 or unset draws a random seed in [0, 4294967294], as A1111 does."""
    if seed is None or seed == -1:
        return secrets.randbelow(MAX_SEED + 1)
    return seed


def job_from_request(request: generator_pb2.GenerateRequest, max_pixels: int) -> Txt2ImgJob:
    mode = request.mode or generator_pb2.GENERATION_MODE_TXT2IMG
    if mode != generator_pb2.GENERATION_MODE_TXT2IMG:
        name = generator_pb2.GenerationMode.Name(mode)
        raise Unimplemented(f"mode: {name} is not available yet; only TXT2IMG")
    p = request.params
    check = _Checker()
    check.require(len(p.prompt) <= MAX_PROMPT_CHARS, "params.prompt", "at most 20000 characters")
    check.require(
        len(p.negative_prompt) <= MAX_PROMPT_CHARS,
        "params.negative_prompt",
        "at most 20000 characters",
    )
    width, height = p.width or DEFAULT_SIZE, p.height or DEFAULT_SIZE
    _check_size(check, "width", width)
    _check_size(check, "height", height)
    check.require(
        width * height <= max_pixels, "params.width", f"width×height must be ≤ {max_pixels} pixels"
    )
    steps = p.steps or DEFAULT_STEPS
    check.require(1 <= steps <= 150, "params.steps", "must be between 1 and 150")
    cfg = p.cfg_scale if p.HasField("cfg_scale") else DEFAULT_CFG
    check.require(math.isfinite(cfg) and 0 <= cfg <= 30, "params.cfg_scale", "must be in [0, 30]")
    seed = p.seed if p.HasField("seed") else None
    check.require(
        seed is None or seed == -1 or 0 <= seed <= MAX_SEED,
        "params.seed",
        "must be -1 or between 0 and 4294967294",
    )
    batch_size, n_iter = p.batch_size or 1, p.n_iter or 1
    check.require(1 <= batch_size <= 8, "params.batch_size", "must be between 1 and 8")
    check.require(1 <= n_iter <= 16, "params.n_iter", "must be between 1 and 16")
    clip_skip = p.clip_skip or 1
    check.require(1 <= clip_skip <= 12, "params.clip_skip", "must be between 1 and 12")
    request_id = request.request_id or current_request_id() or new_request_id()
    check.require(is_valid_request_id(request_id), "request_id", "at most 64 of A-Z a-z 0-9 _ . -")
    check.require(-10 <= request.priority <= 10, "priority", "must be between -10 and 10")
    check.require(not p.loras, "params.loras", "LoRAs are not available yet")
    check.require(not p.vae, "params.vae", "VAE choice is not available yet")
    check.raise_if_any()
    sampler = resolve_sampler(p.sampler or DEFAULT_SAMPLER)
    resolve_schedule_type(p.schedule_type)
    preview = request.preview
    return Txt2ImgJob(
        request_id=request_id,
        owner=request.owner,
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        model=p.model,
        sampler=sampler.name,
        schedule_type=p.schedule_type or "Automatic",
        steps=steps,
        cfg_scale=cfg,
        width=width,
        height=height,
        seed=resolve_seed(seed),
        batch_size=batch_size,
        n_iter=n_iter,
        clip_skip=clip_skip,
        priority=request.priority,
        preview_every=(preview.every_n_steps or 1) if preview.enabled else 0,
    )
