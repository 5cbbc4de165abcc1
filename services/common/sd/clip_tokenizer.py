"""The real CLIP tokenizer (49,408 tokens) that SD 1.x needs and single files do not carry.

The BPE list `bpe_simple_vocab_16e6.txt.gz` (MIT, openai/CLIP) is fetched at install time, never at
run time: from `SDSTACK_CLIP_BPE`, from `shared/data/clip/` beside the repository, or from the
`open-clip-torch` wheel on PyPI (downloaded with `pip download --no-deps`, never installed; the
member is read with `zipfile`). `vocab.json` and `merges.txt` are derived from it exactly as
openai/CLIP's `simple_tokenizer.py` builds its vocabulary, so `transformers.CLIPTokenizer` loads the
folder offline and gives the same ids as the tokenizer SD 1.x was trained with.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
OPEN_CLIP_VERSION = "3.3.0"
WHEEL_MEMBER = f"open_clip/{BPE_NAME}"

# CLIP keeps 49152 - 256 - 2 merges: lines 2 … 48,895 of the file (line 1 is a header).
NUM_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table, in CLIP's vocabulary order.

    Printable bytes map to themselves and come first; the other 68 bytes map to 256 + n.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _candidates() -> Iterator[Path]:
    env = os.environ.get("SDSTACK_CLIP_BPE")
    if env:
        path = Path(env)
        yield path / BPE_NAME if path.is_dir() else path
    repo_root = Path(__file__).resolve().parents[2]
    yield repo_root.parent / "shared" / "data" / "clip" / BPE_NAME


def _from_wheel(dest: Path) -> None:
    """Read the BPE list out of the open-clip-torch wheel without installing the package."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += [f"open-clip-torch=={OPEN_CLIP_VERSION}", "-d", tmp]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            dest.write_bytes(archive.read(WHEEL_MEMBER))


def fetch_clip_bpe(dest: Path) -> Path:
    """Make sure `dest` (a folder) holds the verified BPE list; return the file's path.

    Runs at install time: the last resort downloads a wheel from the package registry.
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / BPE_NAME
    if target.is_file() and _sha256(target) == BPE_SHA256:
        return target
    for candidate in _candidates():
        if candidate.is_file() and _sha256(candidate) == BPE_SHA256:
            shutil.copyfile(candidate, target)
            log.info("CLIP BPE copied from %s", candidate)
            return target
    log.info("CLIP BPE not found locally; reading it from open-clip-torch==%s", OPEN_CLIP_VERSION)
    _from_wheel(target)
    if _sha256(target) != BPE_SHA256:
        target.unlink()
        raise RuntimeError(f"{WHEEL_MEMBER} in open-clip-torch=={OPEN_CLIP_VERSION}: bad sha256")
    return target


def read_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_gz}: expected {NUM_MERGES} merges of two symbols")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def _tokenizer_config() -> dict[str, object]:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_clip_tokenizer(bpe_gz: Path, out_dir: Path) -> Path:
    """Write a folder that `transformers.CLIPTokenizer.from_pretrained` loads offline."""
    merges = read_merges(bpe_gz)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "vocab.json", build_vocab(merges))
    merge_lines = "\n".join(f"{a} {b}" for a, b in merges)
    (out_dir / "merges.txt").write_text(f"#version: 0.2\n{merge_lines}\n", encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config())
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    _write_json(out_dir / "special_tokens_map.json", special)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the CLIP BPE list and write a tokenizer.")
    parser.add_argument("dest", type=Path, help="folder for the BPE file and tokenizer/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bpe = fetch_clip_bpe(args.dest)
    out = write_clip_tokenizer(bpe, args.dest / "tokenizer")
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
