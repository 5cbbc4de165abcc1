"""A1111's extra-network tags in prompts: `<lora:name:weight>` and the like.

The one parser of them: the generator takes its LoRAs from a prompt with it, the request's
check counts them, and the gallery reads the LoRAs of an imported A1111 picture with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument

PROMPT_FIELD = "settings.prompt"
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TYPES = frozenset({"lora", "lyco"})


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:…>` tag: the LoRA's name and its text-encoder and U-Net multipliers."""

    name: str
    unet_weight: float
    te_weight: float


def extract_lora_tags(prompt: str, field: str = PROMPT_FIELD) -> tuple[str, list[LoraTag]]:
    """Remove A1111 extra-network tags from `prompt`; return the rest and the LoRA tags in order.

    Syntaxes: `<lora:name>` (1.0), `<lora:name:w>` (te = unet = w), `<lora:name:te:unet>`, and
    named `te=` / `unet=` (overriding the positional ones). `lyco` is an alias of `lora`. Like
    A1111, every `<type:args>` tag is removed from the text; other types are ignored here, as is
    the `dyn` argument.
    """
    tags: list[LoraTag] = []

    def take(match: re.Match[str]) -> str:
        if match.group(1) in _LORA_TYPES:
            tags.append(_lora_tag(match.group(2).split(":"), field))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


def strip_extra_networks(prompt: str) -> str:
    """`prompt` without extra-network tags, without checking them (for token counters)."""
    return _EXTRA_NETWORK.sub("", prompt)


def _lora_tag(items: list[str], field: str) -> LoraTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    if not positional:
        raise InvalidArgument(field, "a <lora:…> tag needs a name")
    name = _lora_name(positional[0], field)
    te = _lora_weight(positional[1], field) if len(positional) > 1 else 1.0
    te = _lora_weight(named["te"], field) if "te" in named else te
    unet = _lora_weight(positional[2], field) if len(positional) > 2 else te
    unet = _lora_weight(named["unet"], field) if "unet" in named else unet
    return LoraTag(name=name, unet_weight=unet, te_weight=te)


def _lora_name(raw: str, field: str) -> str:
    name = raw.strip()
    if not name:
        raise InvalidArgument(field, "a <lora:…> tag needs a name")
    if "/" in name or "\\" in name or ".." in name or not name.isprintable():
        raise InvalidArgument(field, f"LoRA name {name!r} must not contain a path")
    return name


def _lora_weight(raw: str, field: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(field, f"LoRA weight {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgument(field, f"LoRA weight {raw!r} is not a finite number")
    return value
