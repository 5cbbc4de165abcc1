"""The committed stubs are exactly what `make protos` generates from `protos/`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.common.proto.sdstack.v1 import generator_pb2

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "services" / "common" / "proto"


def _tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "proto"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    generated, committed = _tree(out), _tree(COMMITTED)
    assert sorted(generated) == sorted(committed), "stub files differ: run `make protos`"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale stubs (run `make protos`): {stale}"


def test_contract_defines_every_mode_and_streams_progress() -> None:
    modes = set(generator_pb2.GenerationMode.keys())
    assert {
        "GENERATION_MODE_TXT2IMG",
        "GENERATION_MODE_IMG2IMG",
        "GENERATION_MODE_INPAINT",
        "GENERATION_MODE_UPSCALE",
        "GENERATION_MODE_VARIATION",
    } <= modes
    generate = generator_pb2.DESCRIPTOR.services_by_name["Generator"].methods_by_name["Generate"]
    assert generate.server_streaming
