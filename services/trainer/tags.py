"""Captions as comma-separated tags: parsing, frequency, and bulk edits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_CAPTION_CHARS = 2000
MAX_TAG_CHARS = 200


def split_tags(caption: str) -> list[str]:
    """Tags of a caption in order, stripped, without empties or repeats."""
    seen: dict[str, None] = {}
    for raw in caption.replace("\n", ",").split(","):
        tag = " ".join(raw.split())
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_frequency(captions: Iterable[str]) -> list[tuple[str, int]]:
    """(tag, number of captions holding it), most frequent first, then alphabetical."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(split_tags(caption))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True)
class TagEdit:
    """One bulk edit: removals, then replacements, then additions, then the trigger word
    first (moved there when already present)."""

    add: Sequence[str] = ()
    remove: Sequence[str] = ()
    replace: Mapping[str, str] = field(default_factory=dict)
    trigger_word: str = ""

    def apply(self, caption: str) -> str:
        removed = set(self.remove)
        tags = [t for t in split_tags(caption) if t not in removed]
        tags = [self.replace.get(t, t) for t in tags]
        tags += list(self.add)
        if self.trigger_word:
            tags = [self.trigger_word, *(t for t in tags if t != self.trigger_word)]
        return join_tags(split_tags(join_tags(tags)))


def merge_tags(existing: str, found: Sequence[str]) -> str:
    """`existing` with the tags of `found` it lacks appended."""
    return join_tags(split_tags(join_tags([*split_tags(existing), *found])))
