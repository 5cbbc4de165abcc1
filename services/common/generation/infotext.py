"""The generation request and A1111's infotext, both ways.

Writing: every `Settings` field with an `infotext` label is written under it when it is
not its default (`labelled_values`). Reading is for PNGs made elsewhere (imported A1111
pictures, or records older than the stored request): `request_from_infotext` takes what an
infotext says back into a request, tolerantly, since a foreign file must never fail on it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.common.generation.lora_tags import extract_lora_tags
from services.common.generation.request import GenerationRequest
from services.common.generation.settings import LoraUse, Settings
from services.common.generation.tasks import HiresOptions, Txt2Img
from services.common.infotext import Infotext, parse_lora_hashes

CORE_LABELS = {
    "Steps": "steps",
    "Sampler": "sampler",
    "CFG scale": "cfg_scale",
    "Seed": "seed",
    "Model": "model",
    "VAE": "vae",
    "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength",
}
"""Infotext keys of the settings A1111 always writes, by the field they hold."""
HIRES_LABELS = {
    "Hires upscale": "scale",
    "Hires steps": "second_pass_steps",
    "Hires upscaler": "upscaler",
    "Denoising strength": "denoising_strength",
}


def labels() -> dict[str, str]:
    """Settings field name → its infotext label, for every labelled field."""
    found = {}
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("infotext"), str):
            found[name] = str(extra["infotext"])
    return found


def labelled_values(settings: Settings) -> dict[str, object]:
    """The infotext entries of the labelled fields that are not at their default."""
    defaults = Settings()
    values: dict[str, object] = {}
    for name, label in labels().items():
        value = getattr(settings, name)
        if value is not None and value != getattr(defaults, name):
            values[label] = value
    return values


def request_from_infotext(parsed: Infotext) -> GenerationRequest:
    """What an infotext says of how its picture was made; unreadable values are left out."""
    params = parsed.params
    raw: dict[str, Any] = {"prompt": _without_tags(parsed.prompt)}
    raw["negative_prompt"] = parsed.negative_prompt
    by_label = {**CORE_LABELS, **{label: name for name, label in labels().items()}}
    for label, name in by_label.items():
        if label in params:
            raw[name] = _value(params[label])
    width, _, height = params.get("Size", "").partition("x")
    raw["width"], raw["height"] = _value(width), _value(height)
    raw["loras"] = _loras(parsed)
    settings = _tolerant(Settings, raw)
    hires = {name: _value(params[key]) for key, name in HIRES_LABELS.items() if key in params}
    task = Txt2Img(hires=_tolerant(HiresOptions, hires)) if "Hires upscale" in params else Txt2Img()
    return GenerationRequest(settings=settings, task=task)


def _loras(parsed: Infotext) -> list[dict[str, Any]]:
    """The `<lora:…>` tags' LoRAs with their weights, then the rest of `Lora hashes`."""
    hashes = parse_lora_hashes(parsed.params.get("Lora hashes", ""))
    found: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(InvalidArgument):
        for tag in extract_lora_tags(parsed.prompt)[1]:
            found.setdefault(
                tag.name,
                {"name": tag.name, "weight": tag.unet_weight, "text_encoder_weight": tag.te_weight},
            )
    for name, short_hash in hashes.items():
        found.setdefault(name, {"name": name})["short_hash"] = short_hash
    return [lora for lora in found.values() if _fits(LoraUse, lora)]


def _without_tags(prompt: str) -> str:
    """The prompt as the generator encodes it: its LoRA tags are in `loras`."""
    try:
        return extract_lora_tags(prompt)[0]
    except InvalidArgument:
        return prompt


def _value(text: str) -> Any:
    """An infotext value as the JSON scalar it spells (`7` → 7, `True` → True)."""
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def _fits(model: type[LoraUse], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def _tolerant(model: type[Any], data: dict[str, Any]) -> Any:
    """`model` from `data`, leaving out each field whose value it refuses."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        broken = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
        kept = {key: value for key, value in data.items() if key not in broken}
        return model.model_validate(kept)
