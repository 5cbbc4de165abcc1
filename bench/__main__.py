"""Runs every benchmark in turn, each writing its own section of bench/RESULTS.md.

    .venv/bin/python -m bench [generator gallery trainer curves vae_memory gpu] [--quick]

Each benchmark runs in its own process (`python -m bench.<name>`), so memory, threads and
the trainer's worker processes of one cannot slow the next. `--quick` is a smoke run: the
small setting of each (it overwrites their sections with smoke-run figures). A failing
benchmark does not stop the others; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# The generator's sections: the tiny model at two sizes, then at 256² with its U-Net
# compiled (LoRA switches and mixes on compiled graphs); SD 1.5 in float32, in bfloat16, and
# in bfloat16 compiled.
GENERATOR_FULL = (
    "--sizes 128 256 256 256 256 256 --steps 10 20 20 20 20 20 "
    "--archs tiny tiny tiny sd15 sd15 sd15 "
    "--precisions float32 float32 float32 float32 bfloat16 bfloat16 "
    "--compiles off off default off off default --repeats 3"
)
# Full and quick arguments per benchmark. Only curves has its own --quick; the others get
# small explicit settings.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "generator": (
        GENERATOR_FULL.split(),
        ["--sizes", "128", "--steps", "10", "--repeats", "2"],
    ),
    "gallery": ([], ["--sizes", "1000", "10000", "--repeats", "50"]),
    "trainer": ([], ["--steps", "10", "--images", "4"]),
    "curves": ([], ["--quick"]),
    "vae_memory": ([], ["--sides", "512", "--tile", "256"]),
    "gpu": ([], ["--quick"]),  # without a CUDA device and --quick it says so and stops
}


def run(name: str, quick: bool) -> int:
    full, small = BENCHMARKS[name]
    command = [sys.executable, "-m", f"bench.{name}", *(small if quick else full)]
    sys.stdout.write(f"\n=== {' '.join(command[1:])}\n")
    sys.stdout.flush()
    started = time.perf_counter()
    code = subprocess.call(command)
    sys.stdout.write(f"=== bench.{name}: exit {code} after {time.perf_counter() - started:.0f} s\n")
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)}; default all")
    parser.add_argument("--quick", action="store_true", help="small settings, a smoke run")
    args = parser.parse_args()
    names = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = [name for name in names if run(name, args.quick) != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
