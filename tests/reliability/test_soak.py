"""Memory soak: many generations through the gateway, switching LoRAs, with the generator's
resident memory (RSS) sampled after every request; after a warm-up it must stay flat.

Ten LoRAs (more than the eight adapters a pipeline keeps), each about 6 MB, are used in turn
with a generation without LoRA between them, so past the warm-up every LoRA request
evicts an adapter and loads one from its file: the load, evict and disable paths all run
every few requests. The slope of RSS over the request count (least squares) must stay under
an eighth of one LoRA file per request. A leak of one copy of a LoRA per LoRA request (half
the requests) grows RSS by half a LoRA file per request, four times the bound: the second
test plants exactly that leak in a generator (a `sitecustomize` that keeps the tensors of
every LoRA it loads) and checks the same measure catches it.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from diffusers import StableDiffusionPipeline

from services.generator.loras import make_kohya_lora
from tests.reliability.test_load import write_results
from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway, start_generator

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

LORAS = 10  # more than LoraAdapters keeps (8): past the warm-up every LoRA request loads one
RANK = 128  # about 6 MB per file on the tiny model: a leaked copy is far above RSS noise
WARM_UP_ROUNDS = 2  # every LoRA loaded and evicted at least once before sampling
ROUNDS = 6  # sampled rounds of 2 × LORAS requests each
BOUND_FRACTION = 1 / 8  # of one LoRA file per request

# Kept by every generator this test starts with it on PYTHONPATH: a real leak of the
# tensors of each LoRA it loads, to prove the bound catches one.
PLANTED_LEAK = """
from safetensors.torch import load_file

from services.generator import loras

_kept = []
_load = loras.LoraAdapters._load


def _leaky_load(self, request):
    _load(self, request)
    _kept.append(load_file(str(request.path)))


loras.LoraAdapters._load = _leaky_load
"""


@dataclass
class Soak:
    requests: int
    rss: list[int]  # bytes, one sample per request after the warm-up
    threads: tuple[int, int]  # the generator's threads at the first and the last sample
    slope: float  # bytes per request, least squares over the samples
    bound: float  # bytes per request
    lora_bytes: int


@pytest.fixture(scope="module")
def lora_names(
    running_stack: RunningStack, tiny_model_files, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], int]]:
    """Ten LoRAs for the tiny model in the store, and the size of one file."""
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    folder = tmp_path_factory.mktemp("soak-loras")
    names, sizes = [], []
    with running_stack.http() as http:
        for n in range(LORAS):
            path = make_kohya_lora(
                pipe, folder / f"soak-{n}.safetensors", rank=RANK, seed=100 + n, scale=0.5
            )
            name = f"soak-lora-{n}"
            response = http.post(
                "/v1/models",
                params={"name": name, "kind": "lora", "format": "safetensors", "overwrite": True},
                content=path.read_bytes(),
                headers={"content-type": "application/octet-stream"},
            )
            assert response.status_code == 201, response.text
            names.append(name)
            sizes.append(path.stat().st_size)
    yield names, min(sizes)


def _stack(
    running_stack: RunningStack, tmp_path: Path, name: str
) -> tuple[ExtraProcess, ExtraProcess]:
    generator = start_generator(running_stack, tmp_path / f"{name}-generator")
    try:
        gateway = start_gateway(
            running_stack,
            tmp_path / f"{name}-gateway",
            generator_target=generator.generator_target,
            rate_limit_per_minute=0,
        )
    except BaseException:
        generator.stop()
        raise
    return generator, gateway


def soak(
    generator: ExtraProcess,
    gateway: ExtraProcess,
    names: list[str],
    lora_bytes: int,
    rounds: int,
    warm_up: int = WARM_UP_ROUNDS,
) -> Soak:
    process = psutil.Process(generator.process.pid)
    samples: list[int] = []
    threads: list[int] = []
    requests = 0
    started = time.monotonic()
    with httpx.Client(base_url=gateway.base_url, timeout=120) as http:
        for round_ in range(warm_up + rounds):
            for n, name in enumerate(names):
                for loras in ([{"name": name, "weight": 0.8}], []):
                    body = {
                        "prompt": f"a pavilion by the lake {round_} {n}",
                        "seed": requests,
                        "width": 64,
                        "height": 64,
                        "steps": 2,
                        "loras": loras,
                    }
                    response = http.post("/v1/generations", json=body)
                    assert response.status_code == 200, response.text
                    requests += 1
                    if round_ >= warm_up:
                        samples.append(process.memory_info().rss)
                        threads.append(process.num_threads())
            rss = process.memory_info().rss
            elapsed = time.monotonic() - started
            print(f"soak: {requests} requests, {elapsed:.0f}s, RSS {_mb(rss)}", flush=True)  # noqa: T201
    slope = float(np.polyfit(np.arange(len(samples)), np.array(samples, dtype=float), 1)[0])
    bound = lora_bytes * BOUND_FRACTION
    return Soak(requests, samples, (threads[0], threads[-1]), slope, bound, lora_bytes)


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def test_generator_memory_stays_flat_while_switching_loras(
    running_stack: RunningStack, lora_names: tuple[list[str], int], tmp_path: Path
) -> None:
    names, lora_bytes = lora_names
    generator, gateway = _stack(running_stack, tmp_path, "soak")
    try:
        result = soak(generator, gateway, names, lora_bytes, ROUNDS)
    finally:
        gateway.stop()
        generator.stop()
    rss = result.rss
    lines = [
        "`tests/reliability/test_soak.py::test_generator_memory_stays_flat_while_switching_loras`:"
        f" {result.requests} generations through the gateway (tiny demo model, 64×64, 2 steps),"
        f" {LORAS} LoRAs of {_mb(lora_bytes)} (rank {RANK}) in turn, each followed by one"
        " without LoRA; the generator keeps 8 adapters, so each LoRA request past the warm-up"
        " evicts one and loads one. RSS of the generator process sampled after every request"
        f" past {WARM_UP_ROUNDS * 2 * LORAS} warm-up requests.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| iterations (sampled) | {result.requests} ({len(rss)}) |",
        f"| RSS start / end | {_mb(rss[0])} / {_mb(rss[-1])} |",
        f"| RSS min / max | {_mb(min(rss))} / {_mb(max(rss))} |",
        f"| generator threads at the first / last sample | {result.threads[0]} / "
        f"{result.threads[1]} |",
        f"| slope (least squares) | {result.slope / 1024:.1f} KiB per request |",
        f"| bound | {result.bound / 1024:.0f} KiB per request (1/8 of one LoRA file; a leaked "
        f"copy per LoRA request would be {lora_bytes / 2 / 1024:.0f}) |",
    ]
    write_results("Memory soak", lines)
    assert result.slope < result.bound, lines


def test_the_soak_measure_catches_a_planted_lora_leak(
    running_stack: RunningStack,
    lora_names: tuple[list[str], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same measure over a generator that keeps every LoRA it loads must fail."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(textwrap.dedent(PLANTED_LEAK))
    paths = [str(planted), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    names, lora_bytes = lora_names
    generator, gateway = _stack(running_stack, tmp_path, "leaky")
    try:
        result = soak(generator, gateway, names, lora_bytes, rounds=2, warm_up=1)
    finally:
        gateway.stop()
        generator.stop()
    assert result.slope > result.bound, (result.slope, result.bound)
