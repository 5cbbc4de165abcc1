"""Argument checks shared by the recipes: each raises `InvalidArgument` naming the field.

The request is checked once at the edge (`services.common.generation`); these guard the recipes
as functions of their own (tests and benchmarks call them directly), with the wire's names."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.errors import InvalidArgument
from services.generator.modes.vae import LATENT_FACTOR

MAX_SIDE = 8192


def check_unit(field: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise InvalidArgument(field, "must be between 0 and 1")


def check_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}")


def check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgument(field, f"must be one of {', '.join(choices)}")


def check_size(width: int, height: int) -> None:
    for field, value in (("params.width", width), ("params.height", height)):
        if value < LATENT_FACTOR or value > MAX_SIDE or value % LATENT_FACTOR:
            raise InvalidArgument(field, f"must be a multiple of 8 between 8 and {MAX_SIDE}")


def check_resize(field: str, value: int) -> None:
    if value < 0 or value > MAX_SIDE or value % LATENT_FACTOR:
        raise InvalidArgument(field, f"must be 0 or a multiple of 8 up to {MAX_SIDE}")


def check_subseeds(seeds: Sequence[int], subseeds: Sequence[int]) -> None:
    if subseeds and len(subseeds) != len(seeds):
        raise InvalidArgument("params.subseed", "needs one variation seed per image")
