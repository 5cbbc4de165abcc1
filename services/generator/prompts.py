"""A1111 prompt syntax: emphasis weights, `BREAK`, LoRA tags, prompt editing, and
long-prompt encoding.

Follows AUTOMATIC1111's `modules/prompt_parser.py` (emphasis), `modules/extra_networks.py` and
the built-in Lora extension (extra-network tags) and `modules/sd_hijack_clip.py` (75-token
chunks, comma backtracking, "Original" emphasis), so a prompt written for A1111 conditions the
model the same way here.

Prompt editing `[from:to:when]` and alternation `[a|b]` are resolved per step first
(`prompt_editing`), and each distinct text is encoded once (`encode_schedule`).
Composition `a AND b :0.5` splits the positive prompt into sub-prompts guided together with
their weights (A1111's `get_multicond_prompt_list`). Unlike A1111, a trailing `:number` is a
weight only when the prompt has an `AND`, so `aspect 16:9` stays text.
Not handled yet: textual-inversion embeddings and comment lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from services.common.errors import InvalidArgument
from services.common.generation.lora_tags import strip_extra_networks
from services.generator.prompt_editing import prompt_schedule

PROMPT_FIELD = "params.prompt"
NEGATIVE_PROMPT_FIELD = "params.negative_prompt"
CLIP_SKIP_FIELD = "params.clip_skip"

CHUNK_TOKENS = 75
"""Prompt tokens per chunk; each chunk is encoded as BOS + 75 tokens + EOS = 77 positions."""
MAX_PROMPT_CHUNKS = 32
MAX_PROMPT_TOKENS = MAX_PROMPT_CHUNKS * CHUNK_TOKENS
COMMA_BACKTRACK = 20
"""A1111's `comma_padding_backtrack` default: how far back a chunk overflow looks for a comma."""

ROUND_MULTIPLIER = 1.1
MAX_EMPHASIS_WEIGHT = 1e6  # past it an embedding overflows float32/16 into NaN pictures
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0

_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]          # escaped bracket or backslash: a literal character
    | \\                  # a lone backslash: dropped
    | [(\[]               # opening bracket
    | :([+-]?[.\d]+)\)    # `:weight)` closes a round bracket with an explicit weight
    | [)\]]               # closing bracket
    | [^\\()\[\]:]+       # plain text
    | :                   # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


class _Weights:
    """Fragments and their weights while parsing.

    A1111 multiplies the weights of every fragment since a bracket opened when it closes. The
    ranges are recorded and applied at the end in the same order with numpy, which gives the
    same float64 products without the quadratic Python loop on adversarial prompts.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.initial: list[float] = []
        self.ranges: list[tuple[int, int, float]] = []

    def append(self, text: str, weight: float) -> None:
        self.texts.append(text)
        self.initial.append(weight)

    def multiply_from(self, start: int, multiplier: float) -> None:
        self.ranges.append((start, len(self.texts), multiplier))

    def resolve(self) -> list[float]:
        weights = np.array(self.initial, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for start, end, multiplier in self.ranges:
                weights[start:end] *= multiplier
        return weights.tolist()


def parse_prompt_attention(text: str, field: str = PROMPT_FIELD) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs by A1111's emphasis rules.

    `(x)` ×1.1, `(x:w)` ×w, `[x]` ÷1.1, nested brackets multiply, unclosed brackets close at the
    end, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal. A standalone uppercase `BREAK` gives the marker
    `("BREAK", -1.0)`; like A1111, a `BREAK` inside brackets gets multiplied too and is then
    just text. Adjacent fragments of equal weight are merged. A weight that is not a number
    raises `InvalidArgument(field, ...)` (A1111 raises a ValueError there).
    """
    parts = _Weights()
    round_open: list[int] = []
    square_open: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        _apply_token(match, parts, round_open, square_open, field)
    for start in round_open:
        parts.multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        parts.multiply_from(start, SQUARE_MULTIPLIER)
    weights = parts.resolve()
    if not all(math.isfinite(w) and abs(w) <= MAX_EMPHASIS_WEIGHT for w in weights):
        raise InvalidArgument(
            field,
            f"emphasis weights (nested brackets multiply) must be at most {MAX_EMPHASIS_WEIGHT:g}",
        )
    return _merge_equal(list(zip(parts.texts, weights, strict=True)) or [("", 1.0)])


def _apply_token(
    match: re.Match[str],
    parts: _Weights,
    round_open: list[int],
    square_open: list[int],
    field: str,
) -> None:
    token, weight = match.group(0), match.group(1)
    if token.startswith("\\"):
        parts.append(token[1:], 1.0)
    elif token == "(":
        round_open.append(len(parts.texts))
    elif token == "[":
        square_open.append(len(parts.texts))
    elif weight is not None and round_open:
        parts.multiply_from(round_open.pop(), _parse_emphasis_weight(weight, field))
    elif token == ")" and round_open:
        parts.multiply_from(round_open.pop(), ROUND_MULTIPLIER)
    elif token == "]" and square_open:
        parts.multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
    else:
        _append_plain(token, parts)


def _parse_emphasis_weight(weight: str, field: str) -> float:
    try:
        return float(weight)
    except ValueError:
        raise InvalidArgument(field, f"emphasis weight {weight!r} is not a number") from None


def _append_plain(token: str, parts: _Weights) -> None:
    for index, piece in enumerate(_BREAK.split(token)):
        if index > 0:
            parts.append(BREAK_TEXT, BREAK_WEIGHT)
        parts.append(piece, 1.0)


def _merge_equal(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in pairs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def _is_break(text: str, weight: float) -> bool:
    return text == BREAK_TEXT and weight == BREAK_WEIGHT


@dataclass
class _Chunk:
    tokens: list[int]
    weights: list[float]


class _Chunker:
    """A1111's `tokenize_line`: weighted tokens into chunks of at most 75 tokens.

    A chunk ends at `BREAK` or when full; when full and a comma lies within the last 20 tokens,
    the tokens after that comma move to the next chunk so a phrase is not cut in half.
    """

    def __init__(self, comma_token: int | None) -> None:
        self.comma_token = comma_token
        self.chunks: list[_Chunk] = []
        self.current = _Chunk([], [])
        self.last_comma = -1
        self.token_count = 0

    def close(self, is_last: bool = False) -> None:
        self.token_count += len(self.current.tokens) if is_last else CHUNK_TOKENS
        self.chunks.append(self.current)
        self.current = _Chunk([], [])
        self.last_comma = -1

    def add(self, token: int, weight: float) -> None:
        chunk = self.current
        if token == self.comma_token:
            self.last_comma = len(chunk.tokens)
        elif self._backtrack_applies():
            cut = self.last_comma + 1
            moved = _Chunk(chunk.tokens[cut:], chunk.weights[cut:])
            del chunk.tokens[cut:], chunk.weights[cut:]
            self.close()
            self.current = moved
        if len(self.current.tokens) == CHUNK_TOKENS:
            self.close()
        self.current.tokens.append(token)
        self.current.weights.append(weight)

    def _backtrack_applies(self) -> bool:
        size = len(self.current.tokens)
        return (
            size == CHUNK_TOKENS
            and self.last_comma != -1
            and size - self.last_comma <= COMMA_BACKTRACK
        )

    def finish(self) -> list[_Chunk]:
        if self.current.tokens or not self.chunks:
            self.close(is_last=True)
        return self.chunks


@dataclass(frozen=True)
class EmbedSchedule:
    """Embeddings that change during sampling (A1111 prompt editing): `embeds[k]` conditions
    the steps up to and including `ends[k]`; steps past the last end use the last."""

    ends: tuple[int, ...]
    embeds: tuple[torch.Tensor, ...]

    @classmethod
    def constant(cls, embeds: torch.Tensor) -> EmbedSchedule:
        return cls((1,), (embeds,))

    def at(self, step: int) -> torch.Tensor:
        for end, embeds in zip(self.ends, self.embeds, strict=True):
            if step <= end:
                return embeds
        return self.embeds[-1]


@dataclass(frozen=True)
class ComposedPrompt:
    """A1111 `AND`: sub-prompts guided together, `(weight, schedule)` each."""

    parts: tuple[tuple[float, EmbedSchedule], ...]


def split_composition(prompt: str) -> list[tuple[str, float]]:
    """`a AND b :0.5` → `[("a", 1.0), ("b", 0.5)]`; a prompt without `AND` is one part."""
    pieces = _AND.split(prompt)
    if len(pieces) == 1:
        return [(prompt, 1.0)]
    parts = []
    for piece in pieces:
        found = _SUBPROMPT_WEIGHT.match(piece)
        assert found is not None  # the pattern matches any text
        weight = float(found.group(2)) if found.group(2) else 1.0
        parts.append((found.group(1), weight))
    return parts


class PromptEncoder:
    """Encodes A1111-syntax prompts of any length into CLIP embeddings for a diffusers pipeline.

    The result has 77 positions per 75-token chunk and can be passed as `prompt_embeds` /
    `negative_prompt_embeds`. Plain prompts of one chunk give exactly diffusers' own encoding.
    LoRA tags must be removed first (`extract_lora_tags`); `encode` reads them as text.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.id_start: int = tokenizer.bos_token_id
        self.id_end: int = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.id_pad: int = self.id_end if pad is None else pad
        self.comma_token: int | None = _token_id(tokenizer, ",</w>")

    def count_tokens(self, prompt: str) -> int:
        """A1111's token counter: full chunks count 75, the last one its real length.

        Extra-network tags are ignored, as in A1111's UI counter; no length limit applies.
        """
        _, count = self._chunks(strip_extra_networks(prompt), PROMPT_FIELD)
        return count

    def encode(self, prompt: str, clip_skip: int = 1, field: str = PROMPT_FIELD) -> torch.Tensor:
        """`[1, 77 * chunks, hidden]` embeddings of `prompt` on the text encoder's device."""
        chunks, _ = self._chunks(prompt, field)
        if len(chunks) > MAX_PROMPT_CHUNKS:
            raise InvalidArgument(field, f"longer than {MAX_PROMPT_TOKENS} tokens")
        return self._encode_chunks(chunks, clip_skip)

    def encode_pair(
        self, prompt: str, negative: str, clip_skip: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative embeddings padded to the same length with empty-prompt chunks.

        As A1111's `pad_cond_uncond`: the shorter one is extended by repeating the encoding of
        the empty prompt, so both can go through the U-Net in one batch.
        """
        positive = self.encode(prompt, clip_skip, PROMPT_FIELD)
        negative_embeds = self.encode(negative, clip_skip, NEGATIVE_PROMPT_FIELD)
        length = max(positive.shape[1], negative_embeds.shape[1])
        return self._pad_to(positive, length, clip_skip), self._pad_to(
            negative_embeds, length, clip_skip
        )

    def encode_schedule(
        self, prompt: str, negative: str, steps: int, clip_skip: int = 1
    ) -> tuple[ComposedPrompt, EmbedSchedule]:
        """The prompt's sub-prompts (`AND`) and the negative prompt as schedules over `steps`
        steps, every entry padded to one length (as `encode_pair`), each distinct text
        encoded once."""
        encoded: dict[str, torch.Tensor] = {}

        def schedule(text: str, field: str) -> list[tuple[int, str]]:
            entries = prompt_schedule(text, steps)
            for _, step_text in entries:
                if step_text not in encoded:
                    encoded[step_text] = self.encode(step_text, clip_skip, field)
            return entries

        positive = [(w, schedule(text, PROMPT_FIELD)) for text, w in split_composition(prompt)]
        negative_entries = schedule(negative, NEGATIVE_PROMPT_FIELD)
        length = max(embeds.shape[1] for embeds in encoded.values())
        padded = {text: self._pad_to(e, length, clip_skip) for text, e in encoded.items()}

        def embed_schedule(entries: list[tuple[int, str]]) -> EmbedSchedule:
            ends = tuple(end for end, _ in entries)
            return EmbedSchedule(ends, tuple(padded[text] for _, text in entries))

        composed = ComposedPrompt(tuple((w, embed_schedule(part)) for w, part in positive))
        return composed, embed_schedule(negative_entries)

    def _pad_to(self, embeds: torch.Tensor, length: int, clip_skip: int) -> torch.Tensor:
        missing = (length - embeds.shape[1]) // (CHUNK_TOKENS + 2)
        if missing == 0:
            return embeds
        empty = self.encode("", clip_skip)
        return torch.cat([embeds, *([empty] * missing)], dim=1)

    def _chunks(self, prompt: str, field: str) -> tuple[list[_Chunk], int]:
        parsed = parse_prompt_attention(prompt, field)
        texts = [text for text, weight in parsed if not _is_break(text, weight)]
        token_lists = iter(self._tokenize(texts))
        chunker = _Chunker(self.comma_token)
        for text, weight in parsed:
            if _is_break(text, weight):
                chunker.close()
                continue
            for token in next(token_lists):
                chunker.add(token, weight)
        chunks = chunker.finish()
        return chunks, chunker.token_count

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encoded = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=False, verbose=False
        )
        return encoded["input_ids"]

    def _wrap(self, chunk: _Chunk) -> tuple[list[int], list[float]]:
        """BOS + tokens + EOS padding to 75 + EOS; positions after the first EOS get the pad
        token when the tokenizer has its own (SD 2.x), as A1111 and diffusers both do."""
        padding = CHUNK_TOKENS - len(chunk.tokens)
        body = [*chunk.tokens, self.id_end, *([self.id_pad] * padding)]
        return [self.id_start, *body], [1.0, *chunk.weights, *([1.0] * (padding + 1))]

    def _check_clip_skip(self, clip_skip: int) -> None:
        layers = self.text_encoder.config.num_hidden_layers
        if not 1 <= clip_skip <= layers:
            raise InvalidArgument(CLIP_SKIP_FIELD, f"must be between 1 and {layers}")

    @torch.no_grad()
    def _encode_chunks(self, chunks: list[_Chunk], clip_skip: int) -> torch.Tensor:
        self._check_clip_skip(clip_skip)
        wrapped = [self._wrap(chunk) for chunk in chunks]
        device = self.text_encoder.device
        ids = torch.tensor([tokens for tokens, _ in wrapped], dtype=torch.long, device=device)
        weights = torch.tensor([w for _, w in wrapped], dtype=torch.float32, device=device)
        hidden = self._hidden_states(ids, clip_skip)
        weighted = _apply_emphasis(hidden, weights).to(self.text_encoder.dtype)
        return weighted.reshape(1, -1, weighted.shape[-1])

    def _hidden_states(self, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
        """A1111 "Clip skip" N > 1 takes the N-th last hidden state through the final layer norm
        (what diffusers calls `clip_skip=N-1`)."""
        if clip_skip == 1:
            return self.text_encoder(input_ids=ids).last_hidden_state
        outputs = self.text_encoder(input_ids=ids, output_hidden_states=True)
        return self._final_layer_norm(outputs.hidden_states[-clip_skip])

    def _final_layer_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """transformers 5 keeps the layer norm on `CLIPTextModel` itself; 4.x on `text_model`."""
        owner = getattr(self.text_encoder, "text_model", self.text_encoder)
        return owner.final_layer_norm(hidden)


def _token_id(tokenizer: CLIPTokenizer, token: str) -> int | None:
    """The id of `token`, or None; one look-up (`get_vocab()` would copy all 49k entries)."""
    found = tokenizer.convert_tokens_to_ids(token)
    return None if found is None or found == tokenizer.unk_token_id else found


def _apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis, per chunk: scale each position by its weight, then rescale
    so the chunk's mean is what it was before weighting (computed in float32)."""
    z = hidden.float()
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights.unsqueeze(-1)
    new_mean = z.mean(dim=(1, 2), keepdim=True)
    ratio = torch.where(new_mean == 0, torch.ones_like(new_mean), original_mean / new_mean)
    return z * ratio
