"""Session fixtures for the tokenizer and the tiny SD model (registered by `tests/conftest.py`).

The work is keyed on a folder under the session's base temp dir, so it is done once even
when pytest runs test modules in separate sessions of the same base dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.sd.clip_tokenizer import fetch_clip_bpe, write_clip_tokenizer
from services.generator.tiny_model import (
    DIFFUSERS_DIR,
    SINGLE_FILE,
    TinyModelFiles,
    save_tiny_model,
)


def _shared_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    return factory.getbasetemp() / "sdstack-models" / name


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _shared_dir(tmp_path_factory, "clip")
    tokenizer = root / "tokenizer"
    if not (tokenizer / "special_tokens_map.json").is_file():
        write_clip_tokenizer(fetch_clip_bpe(root), tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_files(
    tmp_path_factory: pytest.TempPathFactory, clip_tokenizer_dir: Path
) -> TinyModelFiles:
    root = _shared_dir(tmp_path_factory, "tiny")
    files = TinyModelFiles(root / DIFFUSERS_DIR, root / SINGLE_FILE)
    if not files.single_file.is_file():
        return save_tiny_model(root, clip_tokenizer_dir)
    return files


@pytest.fixture(scope="session")
def model_config_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the loader caches its per-architecture config folders."""
    return _shared_dir(tmp_path_factory, "configs")
