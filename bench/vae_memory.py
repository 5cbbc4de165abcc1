"""VAE memory benchmark: decoding large pictures whole vs in tiles (SDSTACK_VAE_TILE_SIZE).

    .venv/bin/python -m bench.vae_memory [--sides 1024 1536] [--tile 512] [--dtype float32]

The SD 1.5 VAE (random weights: memory and time do not depend on the weights' values)
decodes one picture per side length, once whole as plain diffusers does and once through
`vaes.bound_memory` with tiles of `--tile` pixels. Each decode runs in a fresh process, so
its peak resident memory (`ru_maxrss`) is its own; the row gives the peak above the loaded
model, and the time. Results go to bench/RESULTS.md (section "VAE memory").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime

import diffusers
import torch

from bench.generator import machine, write_section

TITLE = "## VAE memory"


def measure(side: int, tile: int, dtype: str) -> dict[str, float]:
    """Runs in the child process: load the VAE, decode one picture, report memory and time."""
    from diffusers import AutoencoderKL

    from services.common.sd import sd_configs
    from services.common.sd.sd_configs import SD15
    from services.generator.vaes import bound_memory

    vae = AutoencoderKL.from_config(sd_configs.vae_config(SD15)).eval().to(getattr(torch, dtype))
    bound_memory(vae, tile)
    latents = torch.randn(1, 4, side // 8, side // 8, dtype=vae.dtype)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with torch.no_grad():
        vae.decode(latents)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_gib": (peak - loaded) / 2**20, "seconds": seconds}


def in_child(side: int, tile: int, dtype: str) -> dict[str, float]:
    code = (
        "import json, sys; from bench.vae_memory import measure; "
        f"print(json.dumps(measure({side}, {tile}, {dtype!r})))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def section(args: argparse.Namespace, rows: list[str]) -> str:
    return "\n".join(
        [
            TITLE,
            "",
            "The SD 1.5 VAE (random weights) decoding one picture, whole (plain diffusers) vs "
            f"in tiles of {args.tile} px through `vaes.bound_memory` (what "
            "`SDSTACK_VAE_TILE_SIZE` sets), each decode in a fresh process; peak resident "
            f"memory above the loaded model, {args.dtype}. Command: "
            f"`.venv/bin/python -m bench.vae_memory {' '.join(sys.argv[1:])}`.",
            "",
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; torch "
            f"{torch.__version__}, diffusers {diffusers.__version__}.",
            "",
            "| picture | whole: peak | whole: time | tiled: peak | tiled: time | memory | time |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 1536])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    args = parser.parse_args()
    rows = []
    for side in args.sides:
        whole = in_child(side, 0, args.dtype)
        tiled = in_child(side, args.tile, args.dtype)
        rows.append(
            f"| {side}×{side} | {whole['peak_gib']:.2f} GiB | {whole['seconds']:.1f} s "
            f"| {tiled['peak_gib']:.2f} GiB | {tiled['seconds']:.1f} s "
            f"| {whole['peak_gib'] / tiled['peak_gib']:.1f}× less "
            f"| {tiled['seconds'] / whole['seconds']:.2f}× |"
        )
    text = section(args, rows)
    write_section(text, TITLE)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
