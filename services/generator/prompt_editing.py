"""A1111 prompt editing: `[from:to:when]` and alternation `[a|b]`, as prompts per step.

Follows `modules/prompt_parser.py` (`get_learned_conditioning_prompt_schedules`, new-style
scheduling): `when` with a decimal point is a fraction of the steps, without one a step
number; `[to:when]` adds text from that step on and `[from::when]` removes it; `[a|b|c]`
cycles through its options step by step. The text between is kept as written, so emphasis
brackets and weights are read afterwards by the attention parser. A prompt that A1111's
grammar would not accept (say `[a:b]`, or a stray `|`) is used unscheduled, as A1111 does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MAX_NESTING = 64  # deeper brackets are not editing syntax (and would exhaust the stack)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Group:
    """Emphasis brackets kept as text: `(…)`, `(…:w)` or `[…]`."""

    open: str
    items: tuple[_Node, ...]
    close: str


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = _Text | _Group | _Scheduled | _Alternate


class _NotEditable(Exception):
    """The prompt does not follow the editing grammar; it is used as written."""


class _TooDeep(_NotEditable):
    """Brackets nested past `MAX_NESTING`: the whole prompt is used as written."""


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """`[(last_step, prompt_text), ...]`: the text to use up to and including each step.

    A prompt without editing gives `[(steps, prompt)]`.
    """
    try:
        nodes = _Parser(prompt).parse()
    except _NotEditable:
        return [(steps, prompt)]
    ends = {steps}
    _collect_steps(nodes, steps, ends)
    return [(end, _render(nodes, end, steps)) for end in sorted(ends)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.depth = 0

    @contextmanager
    def _nested(self) -> Iterator[None]:
        if self.depth >= MAX_NESTING:
            raise _TooDeep
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def parse(self) -> tuple[_Node, ...]:
        items = self._sequence(stops="", top=True)
        if self.at != len(self.text):
            raise _NotEditable
        return items

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _sequence(self, stops: str, top: bool = False) -> tuple[_Node, ...]:
        items: list[_Node] = []
        while (char := self._peek()) and char not in stops:
            if char == "\\":
                items.append(_Text(self.text[self.at : self.at + 2]))
                self.at += 2
            elif char in "([" and top:
                items.append(self._group_or_text(char))
            elif char == "(":
                items.append(self._round())
            elif char == "[":
                items.append(self._square())
            elif char in ")]:" and top:
                items.append(_Text(char))  # stray brackets and colons are text at the top
                self.at += 1
            elif char in ")]:|":
                raise _NotEditable
            else:
                items.append(_Text(self._plain()))
        return tuple(items)

    def _group_or_text(self, char: str) -> _Node:
        """At the top, a bracket that opens nothing well-formed is text (A1111's grammar)."""
        start = self.at
        try:
            return self._round() if char == "(" else self._square()
        except _TooDeep:
            raise
        except _NotEditable:
            self.at = start + 1
            return _Text(char)

    def _plain(self) -> str:
        start = self.at
        while (char := self._peek()) and char not in "\\()[]:|":
            self.at += 1
        return self.text[start : self.at]

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise _NotEditable
        self.at += 1

    def _round(self) -> _Group:
        with self._nested():
            self._expect("(")
            items = self._round_body()
            self._expect(")")
            return _Group("(", items, ")")

    def _round_body(self) -> tuple[_Node, ...]:
        """Inside `( )` a colon introduces the weight and stays text."""
        items: list[_Node] = []
        while (char := self._peek()) and char != ")":
            if char == ":":
                items.append(_Text(":"))
                self.at += 1
            else:
                items.extend(self._sequence(stops=":)"))
        return tuple(items)

    def _square(self) -> _Node:
        with self._nested():
            return self._square_body()

    def _square_body(self) -> _Node:
        self._expect("[")
        first = self._sequence(stops=":|]")
        char = self._peek()
        if char == "]":
            self.at += 1
            return _Group("[", first, "]")
        if char == "|":
            return self._alternate(first)
        self._expect(":")
        second = self._sequence(stops=":]")
        if self._peek() == ":":
            self.at += 1
            return _Scheduled(first, second, self._number())
        self._expect("]")
        return _Scheduled((), first, _number_text(second))

    def _alternate(self, first: tuple[_Node, ...]) -> _Alternate:
        options = [first]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence(stops="|]"))
        self._expect("]")
        return _Alternate(tuple(options))

    def _number(self) -> str:
        found = _NUMBER.match(self.text, self.at)
        if found is None:
            raise _NotEditable
        self.at = found.end()
        self._expect("]")
        return found.group(1)


def _number_text(items: tuple[_Node, ...]) -> str:
    """`[to:when]`: the part after the colon must be a number, then `]`."""
    if len(items) != 1 or not isinstance(items[0], _Text):
        raise _NotEditable
    found = _NUMBER.fullmatch(items[0].text)
    if found is None:
        raise _NotEditable
    return found.group(1)


def _when_step(when: str, steps: int) -> int:
    value = float(when) * steps if "." in when else float(when)
    return min(steps, int(value))


def _collect_steps(nodes: tuple[_Node, ...], steps: int, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Group):
            _collect_steps(node.items, steps, ends)
        elif isinstance(node, _Scheduled):
            step = _when_step(node.when, steps)
            if step >= 1:
                ends.add(step)
            _collect_steps(node.before, steps, ends)
            _collect_steps(node.after, steps, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, ends)


def _render(nodes: tuple[_Node, ...], step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, _Text):
            parts.append(node.text)
        elif isinstance(node, _Group):
            parts.append(node.open + _render(node.items, step, steps) + node.close)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)
