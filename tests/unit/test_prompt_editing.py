"""A1111 prompt editing and alternation, checked against the schedules A1111 itself produces
(`modules/prompt_parser.py`, `get_learned_conditioning_prompt_schedules`, 10 steps)."""

from __future__ import annotations

import pytest

from services.generator.prompt_editing import prompt_schedule


@pytest.mark.parametrize(
    ("prompt", "schedule"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("a [cat:dog:0.5] b", [(5, "a cat b"), (10, "a dog b")]),
        ("[ugly::2] face", [(2, "ugly face"), (10, " face")]),
        ("a [b:c:1.0]", [(10, "a b")]),
        ("a [b:c:0]", [(10, "a c")]),
        ("a [b:c:99]", [(10, "a b")]),
    ],
)
def test_editing_schedules_match_a1111(prompt: str, schedule: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, 10) == schedule


def test_alternation_cycles_through_its_options_every_step() -> None:
    assert prompt_schedule("[a|(b:1.1)]", 4) == [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]
    assert [text for _, text in prompt_schedule("[fe|||]male", 5)] == [
        "female",
        "male",
        "male",
        "male",
        "female",
    ]


@pytest.mark.parametrize(
    "prompt", ["a [b:c] d", "a | b", "(a|b)", "a \\[b:c:2\\]", "(house:1.3) [on] a hill"]
)
def test_text_outside_the_grammar_is_used_as_written(prompt: str) -> None:
    assert prompt_schedule(prompt, 10) == [(10, prompt)]
