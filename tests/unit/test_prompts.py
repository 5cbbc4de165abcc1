"""A1111 prompt syntax and long-prompt encoding against diffusers' own encoder."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from diffusers import StableDiffusionPipeline

from services.common.errors import InvalidArgument
from services.common.generation import LoraTag, extract_lora_tags
from services.generator.prompts import (
    MAX_PROMPT_TOKENS,
    PromptEncoder,
    parse_prompt_attention,
    split_composition,
)
from services.generator.tiny_model import TinyModelFiles

CHUNK = 77


def rounded(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(text, round(weight, 4)) for text, weight in pairs]


@pytest.fixture(scope="module")
def pipe(tiny_model_files: TinyModelFiles) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def encoder(pipe: StableDiffusionPipeline) -> PromptEncoder:
    return PromptEncoder(pipe.tokenizer, pipe.text_encoder)


@contextmanager
def text_model_alias(text_encoder: torch.nn.Module) -> Iterator[None]:
    """diffusers 0.42.1's `clip_skip` path reads `text_encoder.text_model.final_layer_norm`,
    which transformers 5 moved onto `CLIPTextModel` itself; alias it (unregistered) meanwhile."""
    if hasattr(text_encoder, "text_model"):
        yield
        return
    text_encoder.__dict__["text_model"] = text_encoder
    try:
        yield
    finally:
        del text_encoder.__dict__["text_model"]


def diffusers_embeds(pipe: StableDiffusionPipeline, prompt: str, **kwargs: object) -> torch.Tensor:
    with text_model_alias(pipe.text_encoder):
        embeds, _ = pipe.encode_prompt(
            prompt,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            **kwargs,
        )
    return embeds


# --- emphasis parsing -----------------------------------------------------------------


def test_reference_example_weights() -> None:
    parsed = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    # The first `(` never closes, so it multiplies everything after it by 1.1 (A1111 doctest).
    assert rounded(parsed) == [
        ("a ", 1.0),
        ("house", 1.573),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641),
        (".", 1.1),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("a [on] b", [("a ", 1.0), ("on", 0.9091), (" b", 1.0)]),
        ("((a:2) b:3)", [("a", 6.0), (" b", 3.0)]),
        ("[[x]]", [("x", 0.8264)]),
        ("(x:0.5) (y:1.0)", [("x", 0.5), (" y", 1.0)]),
    ],
)
def test_weights_and_nesting(text: str, expected: list[tuple[str, float]]) -> None:
    assert rounded(parse_prompt_attention(text)) == expected


def test_escapes_are_literal() -> None:
    assert parse_prompt_attention(r"\(literal\] \[x\)") == [("(literal] [x)", 1.0)]
    assert parse_prompt_attention("a \\\\ b") == [("a \\ b", 1.0)]


def test_unbalanced_brackets_close_at_the_end() -> None:
    assert rounded(parse_prompt_attention("(unbalanced")) == [("unbalanced", 1.1)]
    assert rounded(parse_prompt_attention("a [b")) == [("a ", 1.0), ("b", 0.9091)]
    assert parse_prompt_attention("a) b]") == [("a) b]", 1.0)]


def test_break_marker() -> None:
    assert parse_prompt_attention("a cat BREAK a dog") == [
        ("a cat", 1.0),
        ("BREAK", -1.0),
        ("a dog", 1.0),
    ]
    assert parse_prompt_attention("BREAKFAST break") == [("BREAKFAST break", 1.0)]


def test_equal_weights_merged() -> None:
    assert rounded(parse_prompt_attention("(unnecessary)(parens)")) == [("unnecessaryparens", 1.1)]
    assert parse_prompt_attention("") == [("", 1.0)]


def test_scheduling_syntax_is_left_as_text() -> None:
    parsed = parse_prompt_attention("[cat:dog:0.5] [a|b] x AND y")
    assert "".join(text for text, _ in parsed) == "cat:dog:0.5 a|b x AND y"


def test_bad_emphasis_weight_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_prompt_attention("(x:1.2.3)", field="params.negative_prompt")
    assert error.value.violations[0].field == "params.negative_prompt"


# --- LoRA tags ---------------------------------------------------------------------------


def test_lora_tag_syntaxes() -> None:
    prompt = (
        "a <lora:plain> cat, <lora:one:0.5> <lora:two:0.3:0.7> "
        "<lora:named:te=0.2:unet=0.9> <lora:mixed:0.4:unet=1.5> <lyco:alias:2>"
    )
    cleaned, tags = extract_lora_tags(prompt)
    assert cleaned == "a  cat,     "
    assert tags == [
        LoraTag("plain", unet_weight=1.0, te_weight=1.0),
        LoraTag("one", unet_weight=0.5, te_weight=0.5),
        LoraTag("two", unet_weight=0.7, te_weight=0.3),
        LoraTag("named", unet_weight=0.9, te_weight=0.2),
        LoraTag("mixed", unet_weight=1.5, te_weight=0.4),
        LoraTag("alias", unet_weight=2.0, te_weight=2.0),
    ]


def test_prompt_without_tags_is_unchanged() -> None:
    assert extract_lora_tags("a (cat:1.2), <not a tag>") == ("a (cat:1.2), <not a tag>", [])


@pytest.mark.parametrize(
    "prompt",
    [
        "<lora:x:abc>",
        "<lora:x:1:unet=z>",
        "<lora:x:nan>",
        "<lora:../secret:1>",
        "<lora:dir/name:1>",
        "<lora:dir\\name>",
        "<lora:te=1>",
    ],
)
def test_bad_lora_tags_are_invalid_arguments(prompt: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        extract_lora_tags(prompt)
    assert error.value.violations[0].field == "settings.prompt"


# --- encoding ----------------------------------------------------------------------------


def test_plain_prompt_matches_diffusers(pipe: StableDiffusionPipeline, encoder: PromptEncoder):
    ours = encoder.encode("a photo of a cat")
    theirs = diffusers_embeds(pipe, "a photo of a cat")
    assert ours.shape == theirs.shape == (1, CHUNK, pipe.text_encoder.config.hidden_size)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_clip_skip_2_is_diffusers_clip_skip_1(
    pipe: StableDiffusionPipeline, encoder: PromptEncoder
) -> None:
    ours = encoder.encode("a photo of a cat", clip_skip=2)
    assert torch.allclose(ours, diffusers_embeds(pipe, "a photo of a cat", clip_skip=1), atol=1e-5)
    assert not torch.allclose(ours, encoder.encode("a photo of a cat"), atol=1e-3)


def test_empty_prompt_matches_diffusers(pipe: StableDiffusionPipeline, encoder: PromptEncoder):
    assert torch.allclose(encoder.encode(""), diffusers_embeds(pipe, ""), atol=1e-5)


def test_bad_clip_skip(encoder: PromptEncoder) -> None:
    with pytest.raises(InvalidArgument) as error:
        encoder.encode("cat", clip_skip=0)
    assert error.value.violations[0].field == "params.clip_skip"


def test_emphasis_changes_embeddings(encoder: PromptEncoder) -> None:
    plain = encoder.encode("a word here")
    assert not torch.allclose(encoder.encode("a (word:1.5) here"), plain, atol=1e-4)
    assert torch.equal(encoder.encode("a (word:1.0) here"), plain)


def test_emphasis_keeps_the_chunk_mean(encoder: PromptEncoder) -> None:
    plain = encoder.encode("a word here")
    weighted = encoder.encode("a (word:1.5) here")
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)


def test_long_prompt_gives_three_chunks(encoder: PromptEncoder) -> None:
    prompt = " ".join(["cat"] * 200)
    assert encoder.count_tokens(prompt) == 200
    assert encoder.encode(prompt).shape[1] == 3 * CHUNK


def test_break_forces_a_new_chunk(encoder: PromptEncoder) -> None:
    assert encoder.encode("a cat").shape[1] == CHUNK
    assert encoder.encode("a cat BREAK a dog").shape[1] == 2 * CHUNK
    assert encoder.count_tokens("a cat BREAK a dog") == 77
    # The second chunk is the encoding of "a dog" on its own.
    second = encoder.encode("a cat BREAK a dog")[:, CHUNK:]
    assert torch.allclose(second, encoder.encode("a dog"), atol=1e-6)


def test_chunk_overflow_moves_back_to_last_comma(encoder: PromptEncoder) -> None:
    # 70 words and a comma (71 tokens), then 10 more: the chunk is full at 75 with the comma
    # within 20 tokens, so the 4 words after it move on and the second chunk is all 10 words.
    dogs = " ".join(["dog"] * 10)
    prompt = " ".join(["cat"] * 70) + ", " + dogs
    assert encoder.count_tokens(prompt) == 75 + 10
    second = encoder.encode(prompt)[:, CHUNK:]
    assert torch.allclose(second, encoder.encode(dogs), atol=1e-6)
    # A comma further back than 20 tokens is not used: the chunk is cut at 75.
    far = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 40)
    assert encoder.count_tokens(far) == 75 + 6


def test_too_long_prompt_is_refused(encoder: PromptEncoder) -> None:
    with pytest.raises(InvalidArgument) as error:
        encoder.encode(" BREAK ".join(["cat"] * 40))
    assert error.value.violations[0].field == "params.prompt"
    assert str(MAX_PROMPT_TOKENS) in error.value.violations[0].rule


def test_encode_pair_pads_with_empty_chunks(encoder: PromptEncoder) -> None:
    positive, negative = encoder.encode_pair(" ".join(["cat"] * 200), "blurry")
    assert positive.shape == negative.shape == (1, 3 * CHUNK, positive.shape[-1])
    assert torch.equal(negative[:, :CHUNK], encoder.encode("blurry"))
    assert torch.equal(negative[:, 2 * CHUNK :], encoder.encode(""))


def test_encode_pair_negative_errors_name_the_negative(encoder: PromptEncoder) -> None:
    with pytest.raises(InvalidArgument) as error:
        encoder.encode_pair("cat", "(x:1.2.3)")
    assert error.value.violations[0].field == "params.negative_prompt"


def test_count_tokens_ignores_lora_tags(encoder: PromptEncoder) -> None:
    assert encoder.count_tokens("a cat <lora:x:0.5>") == encoder.count_tokens("a cat")


def test_output_follows_the_text_encoder_dtype(pipe: StableDiffusionPipeline) -> None:
    text_encoder = copy.deepcopy(pipe.text_encoder).to(torch.bfloat16)
    embeds = PromptEncoder(pipe.tokenizer, text_encoder).encode("a (cat:1.3)")
    assert embeds.dtype == torch.bfloat16
    assert embeds.device == text_encoder.device
    assert not embeds.requires_grad


def test_long_prompt_tail_reaches_the_unet(
    pipe: StableDiffusionPipeline, encoder: PromptEncoder
) -> None:
    head = " ".join(["cat"] * 80)
    assert diffusers_embeds(pipe, f"{head} red").shape[1] == CHUNK  # diffusers truncates

    def latents(prompt: str) -> torch.Tensor:
        positive, negative = encoder.encode_pair(prompt, "")
        return pipe(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
        ).images

    assert not torch.allclose(latents(f"{head} red"), latents(f"{head} blue"))


def test_pipeline_runs_with_long_prompt_embeddings(
    pipe: StableDiffusionPipeline, encoder: PromptEncoder
) -> None:
    positive, negative = encoder.encode_pair(
        ", ".join(["a (very:1.2) detailed [castle]"] * 30), "blurry, lowres"
    )
    assert positive.shape[1] > CHUNK
    result = pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pil",
    )
    image = result.images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    ("prompt", "parts"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("aspect 16:9", [("aspect 16:9", 1.0)]),
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.2 AND a dog: 0.5", [("a cat", 1.2), (" a dog", 0.5)]),
        ("a (cat:1.3) AND [dog]", [("a (cat:1.3)", 1.0), (" [dog]", 1.0)]),
        ("ANDROID AND sand", [("ANDROID", 1.0), (" sand", 1.0)]),
    ],
)
def test_and_splits_sub_prompts_and_weights(prompt: str, parts: list[tuple[str, float]]) -> None:
    assert split_composition(prompt) == parts
