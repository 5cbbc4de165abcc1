"""Generates the Python stubs of `protos/` into `services/common/proto/` (`make protos`).

The stubs are committed; `tests/unit/test_protos.py` regenerates them into a temporary
folder and fails when they differ from the committed ones.

protoc writes absolute imports (`from sdstack.v1 import common_pb2`); they are rewritten
to relative ones so the stubs live inside the `services.common.proto` package without any
`sys.path` change.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "services" / "common" / "proto"
ABSOLUTE_IMPORT = re.compile(r"^from sdstack\.v1 import ", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("sdstack/**/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc into `out_dir` and returns the files written."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        written = []
        for source in sorted(raw_dir.rglob("*.py*")):
            target = out_dir / source.relative_to(raw_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(ABSOLUTE_IMPORT.sub("from . import ", source.read_text()))
            written.append(target)
    for package in {out_dir, *(p.parent for p in written)}:
        while package != out_dir.parent:
            (package / "__init__.py").touch()
            package = package.parent
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    files = generate(args.out)
    sys.stdout.write(f"generated {len(files)} files into {args.out}\n")


if __name__ == "__main__":
    main()
