"""The settings every generation mode shares, with every bound and default of them.

This module is the one table of generation limits: the gateway's HTTP body, the A1111 API
and the generator's gRPC edge all build `Settings`, so a width the edge accepts is one the
generator accepts. A field's `infotext` label (in its `json_schema_extra`) is the key A1111
writes for it in the PNG's `parameters` text; the infotext module writes and reads every
labelled field from it, so a new setting needs no code there.

`None` means "decided when the job runs": the size of the source image, a random seed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 4_294_967_294
MAX_LORAS = 16
MAX_LORA_WEIGHT = 4.0
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 2048, 8
DEFAULT_SIZE = 512
MAX_STEPS = 150
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_N_ITER = 16
MAX_CLIP_SKIP = 12
MAX_DEEP_CACHE_INTERVAL = 10
MAX_NAME_CHARS = 128
NAME_PATTERN = r"^[A-Za-z0-9_()+\-][A-Za-z0-9 _.()+\-]{0,127}$"
"""A model, LoRA or style name: no path, no control characters."""
BATCH_PIXEL_FACTOR = 4
"""A batch is denoised at once: 8 × 1024² fits the budget's 4×, 8 × 2048² does not."""
DEFAULT_SAMPLER = "Euler a"
ScheduleType = Literal["Automatic", "Karras", "Exponential", "SGM Uniform", "Simple"]
"""A1111's schedule types sdstack makes (the generator maps each to scheduler options)."""


class Model(BaseModel):
    """A frozen value: unknown fields are refused, never dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_nul(text: str) -> str:
    if "\x00" in text:  # PNG text and PostgreSQL cannot hold it
        raise ValueError("must not contain NUL")
    return text


def infotext(label: str) -> dict[str, Any]:
    """The `json_schema_extra` of a field A1111 writes into the infotext as `label`."""
    return {"infotext": label}


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Seed = Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1 draws a random seed.")]
Size = Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP)]
OptionalSize = Annotated[
    Size | None,
    WithJsonSchema(
        {
            "type": ["integer", "null"],
            "minimum": MIN_SIZE,
            "maximum": MAX_SIZE,
            "multipleOf": SIZE_STEP,
        }
    ),
]
"""A size, or null for the default (the JSON schema states the rules at its top)."""
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
LoraWeight = Annotated[float, Field(ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT, allow_inf_nan=False)]


class LoraUse(Model):
    """A LoRA applied to one generation, as `<lora:name:weight>` does in A1111."""

    name: str = Field(pattern=NAME_PATTERN, description="LoRA name as listed by /v1/loras.")
    weight: LoraWeight = Field(1.0, description="Multiplier on the U-Net.")
    text_encoder_weight: LoraWeight | None = Field(
        None, description="Multiplier on the text encoder; default: same as weight."
    )
    short_hash: str = Field(
        "", max_length=64, description="A1111's hash of the file; set by the generator."
    )

    @property
    def te_weight(self) -> float:
        return self.weight if self.text_encoder_weight is None else self.text_encoder_weight


class Settings(Model):
    """What every mode shares. Defaults follow the A1111 web UI."""

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    model: Name = Field("", description="Checkpoint name; default: the default checkpoint.")
    vae: Name = Field("", description="VAE name; default: the checkpoint's own.")
    loras: list[LoraUse] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description="LoRAs besides the prompt's `<lora:…>` tags.",
    )
    sampler: Name = Field(DEFAULT_SAMPLER, min_length=1, description="A1111 sampler name.")
    schedule_type: ScheduleType = Field("Automatic", json_schema_extra=infotext("Schedule type"))
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0, le=MAX_CFG, allow_inf_nan=False)
    width: OptionalSize = Field(None, description="Default 512, or the source image's.")
    height: OptionalSize = Field(None, description="Default 512, or the source image's.")
    seed: Seed = -1
    subseed: Seed = Field(-1, description="Variation seed; -1 draws a random one.")
    subseed_strength: Fraction = Field(0.0, description="How far toward the variation seed.")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE, description="Image i gets seed + i.")
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER, description="Batches run one after another.")
    clip_skip: int = Field(1, ge=1, le=MAX_CLIP_SKIP, json_schema_extra=infotext("Clip skip"))
    eta: Fraction | None = Field(
        None,
        description="Ancestral/DDIM eta; default: the sampler's own.",
        json_schema_extra=infotext("Eta"),
    )
    tiling: bool = Field(
        False,
        description="An image that tiles seamlessly (A1111 Tiling).",
        json_schema_extra=infotext("Tiling"),
    )
    deep_cache_interval: int = Field(
        0,
        ge=0,
        le=MAX_DEEP_CACHE_INTERVAL,
        description="DeepCache: every Nth U-Net pass runs whole, the ones between reuse its "
        "deep features (about 2× faster at 3 on SD 1.5; the image changes slightly). 0/1: off.",
        json_schema_extra=infotext("DeepCache interval"),
    )
    eta_noise_seed_delta: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="A1111's ENSD: each step's sampler noise is drawn from seed + this "
        "(ancestral and SDE samplers, DDIM with eta); 0: the seed's own stream.",
        json_schema_extra=infotext("ENSD"),
    )

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter


def multiple_of_8(value: float) -> int:
    """A size rounded down to the latent grid, at least the smallest size."""
    return max(MIN_SIZE, int(value) // SIZE_STEP * SIZE_STEP)
