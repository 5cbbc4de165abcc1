"""The CLIP tokenizer derived from openai/CLIP's BPE list gives SD 1.x's real token ids."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from services.common.sd.clip_tokenizer import (
    BPE_NAME,
    BPE_SHA256,
    NUM_MERGES,
    bytes_to_unicode,
    fetch_clip_bpe,
)


@pytest.fixture(scope="module")
def tokenizer(clip_tokenizer_dir: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir), local_files_only=True)


def test_a_photo_of_a_cat_gets_the_reference_ids(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_vocabulary_has_49408_tokens_and_sd_special_tokens(tokenizer: CLIPTokenizer) -> None:
    assert len(tokenizer) == 49408
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == 49407
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.model_max_length == 77


def test_prompts_pad_and_truncate_to_77_tokens(tokenizer: CLIPTokenizer) -> None:
    short = tokenizer("a cat", padding="max_length", truncation=True).input_ids
    long = tokenizer("cat " * 200, padding="max_length", truncation=True).input_ids
    assert len(short) == len(long) == 77
    assert short[-1] == 49407
    assert long[0] == 49406 and long[-1] == 49407


def test_case_and_spacing_do_not_change_ids(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer("A  Photo of a CAT").input_ids == tokenizer("a photo of a cat").input_ids


def test_merges_file_has_the_hf_header_and_48894_merges(clip_tokenizer_dir: Path) -> None:
    lines = (clip_tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) - 1 == NUM_MERGES == 48894


def test_byte_symbols_start_with_printable_ascii() -> None:
    symbols = list(bytes_to_unicode().values())
    assert len(set(symbols)) == 256
    assert symbols[0] == "!"


def test_fetch_skips_a_candidate_with_the_wrong_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_tokenizer_dir: Path
) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not the vocabulary")
    monkeypatch.setenv("SDSTACK_CLIP_BPE", str(bad))
    fetched = fetch_clip_bpe(tmp_path / "dest")
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == BPE_SHA256


def test_fetch_prefers_the_file_named_by_the_environment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clip_tokenizer_dir: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(clip_tokenizer_dir.parent / BPE_NAME, source / BPE_NAME)
    monkeypatch.setenv("SDSTACK_CLIP_BPE", str(source))
    with caplog.at_level(logging.INFO, logger="services.common.sd.clip_tokenizer"):
        fetched = fetch_clip_bpe(tmp_path / "dest")
    assert fetched == tmp_path / "dest" / BPE_NAME
    assert str(source / BPE_NAME) in caplog.text
