"""Generator benchmark (issue: generator): the service against plain diffusers, same run.

    .venv/bin/python -m bench.generator [--sizes 128 256] [--steps 10 20] [--archs tiny tiny]
                                        [--repeats 5] [--compiles off default]

Starts the real stack (local S3, services) on free ports in a temporary folder, then
measures, each as a median with its spread:

1. end to end: one image through the generator's gRPC API, and through the gateway's HTTP
   API (`POST /v1/generations`, stored in the gallery, then `GET` of the PNG), vs plain
   diffusers in-process, on the same checkpoint file, sampler, size, steps and seed (goals
   ≤ 1.05× for gRPC, ≤ 1.03× through the gateway);
2. batching: 8 concurrent requests vs the same 8 one after another (goal ≥ 1.5×), once with
   the same settings but for their seeds and once mixed (prompts, step counts, CFG scales);
   beside them, what batching can give on this machine at all: plain diffusers making the
   8 images in one batch vs one after another;
3. LoRA switching: alternating two LoRAs between requests vs keeping one (goal ≤ 3%), with
   three times the repeats: the cost is small against the machine's noise;
4. model load: the first request on a checkpoint not yet loaded vs a cached one;
5. DeepCache, a user's choice: one image over gRPC with `deep_cache_interval` 3 vs without,
   and how far its pixels move (mean of 255 levels).

Each size runs on the project's tiny SD, or with `--archs … sd15` on the full SD 1.5
architecture with random weights (speed does not depend on the weights' values); on the
CPU an SD 1.5 image takes minutes, so that setting measures only the end to end rows.
`--precisions` sets the weights' dtype per size, the service's (`SDSTACK_PRECISION`) and
plain diffusers' alike; below float32 the end to end rows add plain diffusers in float32,
its default, to show what the lower precision gives. `--compiles` sets the service's
`SDSTACK_COMPILE_UNET` per size (plain diffusers stays eager); the warm-ups take the
compilations.

Both sides of each comparison are measured in the same minutes, alternately (A B, B A, …)
after warm-ups of both, with the whole stack up: a machine that gets busier or quieter
during the run (the services' own start-up, a neighbour on a shared host) weighs on both
sides alike instead of on whichever ran second.

Results are written into bench/RESULTS.md (section "Generator"), with the machine.
"""

from __future__ import annotations

import argparse
import io
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import diffusers
import httpx
import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

from sdstack.launcher import Stack, free_port_settings
from services.common.clients import GeneratorClient
from services.common.config import load_settings
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.sd.checkpoint_layout import save_single_file
from services.common.sd.checkpoint_loader import load_pipeline
from services.common.sd.devices import DTYPES
from services.common.sd.sd_configs import SD15
from services.generator.loras import make_kohya_lora
from services.generator.modes import initial_noise
from services.generator.tiny_model import TinyModelFiles, build_pipeline, save_tiny_model

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """## Generator

The service against plain diffusers in the same run, on the project's tiny SD (SD 1.x
topology, random weights: speed does not depend on the weights' values) or, where the
heading says so, the full SD 1.5 architecture with random weights; Euler a, CFG 7, seed 42.
Plain diffusers: `StableDiffusionPipeline` loaded from the same single file, in-process,
with the same initial noise, timed in turns with the service while the stack is up.
sdstack: a gRPC client calling the generator process (A1111 prompt weighting, PNG with
infotext included), and an HTTP client calling the gateway, which has the image stored in
the gallery and then serves its PNG. Where the heading says "U-Net compiled", the service
ran with `SDSTACK_COMPILE_UNET` in that mode (plain diffusers stays eager; the warm-ups took
the compilations). Each subsection names the command that measured it; a run replaces the
subsections it measured and keeps the others.
"""
PROMPT = "a timber pavilion by a lake, morning light"


WARM_UPS = 2
DEEP_CACHE_INTERVAL = 3


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(WARM_UPS):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def alternated(*runs: Callable[[], object], repeats: int, warm_ups: int = WARM_UPS):
    """Times of each run, taken in turns: every repeat starts one run later than the last
    (A B C, B C A, …), after `warm_ups` of each."""
    for _ in range(warm_ups):
        for run in runs:
            run()
    times: tuple[list[float], ...] = tuple([] for _ in runs)
    for repeat in range(repeats):
        for offset in range(len(runs)):
            side = (repeat + offset) % len(runs)
            started = time.perf_counter()
            runs[side]()
            times[side].append(time.perf_counter() - started)
    return times


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} s ({min(times):.3f}–{max(times):.3f})"


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        tokenizer = Path(args.tokenizer)
        self.tokenizer = tokenizer
        self.files = save_model(args.arch, folder / "model", tokenizer)
        settings = load_settings(
            data_dir=folder / "stack",
            clip_tokenizer_dir=tokenizer,
            s3_endpoint="",
            log_level="WARNING",
            queue_size=64,
            precision=args.precision,
            compile_unet=args.compile,
            **free_port_settings(),
        )
        self.stack = Stack(settings)
        self.settings = settings

    def settings_of_one_image(self) -> dict[str, object]:
        """The benchmark's image, under the field names the gRPC and REST APIs share."""
        return {
            "prompt": PROMPT,
            "seed": 42,
            "width": self.args.size,
            "height": self.args.size,
            "steps": self.args.steps,
            "sampler": "Euler a",
            "model": "bench",
        }

    def request(self, **params: object) -> generator_pb2.GenerateRequest:
        values = {**self.settings_of_one_image(), **params}
        return generator_pb2.GenerateRequest(params=common_pb2.GenerationParams(**values))

    def plain_pipeline(self, precision: str | None = None) -> StableDiffusionPipeline:
        """Plain diffusers on the benchmark's checkpoint, at the run's precision unless told."""
        pipe = load_pipeline(
            self.files.single_file,
            config_root=self.folder / "configs",
            tokenizer_dir=self.tokenizer,
            dtype=DTYPES[precision or self.args.precision],
        )
        pipe.set_progress_bar_config(disable=True)
        # the same sampler as the service's requests (A1111 "Euler a"); the checkpoint's own
        # PNDM would run one U-Net pass more per image
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        return pipe

    def plain_run(self, pipe: StableDiffusionPipeline, images: int = 1) -> Callable[[], None]:
        """Plain diffusers making `images` images in one batch, with the service's noise."""
        size, steps = self.args.size, self.args.steps
        seeds = [42 + i for i in range(images)]
        noise = initial_noise((4, size // 8, size // 8), seeds)

        def run() -> None:
            pipe(
                [PROMPT] * images,
                width=size,
                height=size,
                num_inference_steps=steps,
                latents=noise.to(pipe.unet.dtype),
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            )

        return run

    def end_to_end(
        self, client: GeneratorClient, http: httpx.Client, pipe: StableDiffusionPipeline
    ) -> dict[str, list[float]]:
        """Times of one image: plain diffusers, the generator over gRPC, the gateway over
        HTTP, and below float32 plain diffusers in float32 as well."""
        runs = {
            "plain": self.plain_run(pipe),
            "grpc": lambda: client.generate_images(self.request()),
            "gateway": lambda: self.through_gateway(http),
            "deep cache": lambda: client.generate_images(
                self.request(deep_cache_interval=DEEP_CACHE_INTERVAL)
            ),
        }
        if self.args.precision != "float32":
            runs["plain float32"] = self.plain_run(self.plain_pipeline("float32"))
        warm_ups = 1 if self.args.arch == "sd15" else WARM_UPS  # minutes an image on a CPU
        times = alternated(*runs.values(), repeats=self.args.repeats, warm_ups=warm_ups)
        return dict(zip(runs, times, strict=True))

    def through_gateway(self, http: httpx.Client) -> bytes:
        """What a web client does: ask for the image, then fetch the stored PNG."""
        body = {**self.settings_of_one_image(), "timeout_seconds": 3600}
        made = http.post("/v1/generations", json=body)
        made.raise_for_status()
        image = made.json()["images"][0]["id"]
        png = http.get(f"/v1/images/{image}/file")
        png.raise_for_status()
        return png.content

    def batching(
        self, client: GeneratorClient, requests: list[generator_pb2.GenerateRequest]
    ) -> tuple[list[float], list[float]]:
        """(one after another, all at once)."""

        def sequential() -> None:
            for request in requests:
                client.generate_images(request)

        def concurrent() -> None:
            threads = [threading.Thread(target=client.generate_images, args=(r,)) for r in requests]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        return alternated(sequential, concurrent, repeats=self.batch_repeats)

    def batching_ceiling(self, pipe: StableDiffusionPipeline) -> tuple[list[float], list[float]]:
        """Plain diffusers: 8 images one after another vs one batch of 8 (what batching can
        give on this machine)."""
        one = self.plain_run(pipe)

        def sequential() -> None:
            for _ in range(8):
                one()

        return alternated(sequential, self.plain_run(pipe, images=8), repeats=self.batch_repeats)

    @property
    def batch_repeats(self) -> int:
        return max(2, self.args.repeats // 2)

    def import_loras(self, client: GeneratorClient) -> None:
        """Two LoRAs for the checkpoint, `bench-a` and `bench-b`, imported into the store."""
        pipe = StableDiffusionPipeline.from_pretrained(
            self.files.diffusers_dir, local_files_only=True
        )
        for name, seed in (("bench-a", 1), ("bench-b", 2)):
            path = make_kohya_lora(pipe, self.folder / f"{name}.safetensors", seed=seed)
            client.import_model(
                path, name=name, kind=common_pb2.MODEL_KIND_LORA, file_format="safetensors"
            )

    def lora_switching(self, client: GeneratorClient) -> tuple[list[float], list[float]]:
        same = self.request(prompt=f"{PROMPT} <lora:bench-a:1>")
        other = self.request(prompt=f"{PROMPT} <lora:bench-b:1>")
        flip = [same, other]
        index = [0]

        def keep() -> None:
            client.generate_images(same)

        def switch() -> None:
            index[0] += 1
            client.generate_images(flip[index[0] % 2])

        return alternated(keep, switch, repeats=3 * self.args.repeats)

    def model_load(self, client: GeneratorClient) -> tuple[float, list[float]]:
        cold_files = save_tiny_model(self.folder / "cold", self.tokenizer, seed=1)
        client.import_model(
            cold_files.single_file,
            name="bench-cold",
            kind=common_pb2.MODEL_KIND_CHECKPOINT,
            file_format="safetensors",
        )
        request = self.request(model="bench-cold")
        started = time.perf_counter()
        client.generate_images(request)
        cold = time.perf_counter() - started
        return cold, timed(lambda: client.generate_images(request), self.args.repeats)

    def run(self) -> str:
        self.stack.start()
        gateway = f"http://{self.settings.host}:{self.settings.gateway_port}"
        try:
            pipe = self.plain_pipeline()
            with (
                GeneratorClient(self.settings.target("generator"), timeout=3600) as client,
                httpx.Client(base_url=gateway, timeout=3600) as http,
            ):
                client.import_model(
                    self.files.single_file,
                    name="bench",
                    kind=common_pb2.MODEL_KIND_CHECKPOINT,
                    file_format="safetensors",
                )
                one_image = self.end_to_end(client, http, pipe)
                moved = self.pixels_moved_by_deep_cache(client)
                if self.args.arch == "sd15":
                    return self.section(self.end_to_end_rows(one_image, moved))
                self.import_loras(client)
                same = [self.request(seed=100 + i) for i in range(8)]
                batching = {
                    "8 requests alike but for their seeds": self.batching(client, same),
                    "8 mixed requests (prompts, steps ±25%, CFG)": self.batching(
                        client, self.mixed_requests()
                    ),
                    "8 mixed requests as above, with 2 LoRAs or none": self.batching(
                        client, self.mixed_requests(loras=True)
                    ),
                }
                ceiling = self.batching_ceiling(pipe)
                keep, switch = self.lora_switching(client)
                cold, warm = self.model_load(client)
        finally:
            self.stack.stop()
        rows = [
            *self.end_to_end_rows(one_image, moved),
            *self.other_rows(batching, ceiling, keep, switch, cold, warm),
        ]
        return self.section(rows)

    def mixed_requests(self, loras: bool = False) -> list[generator_pb2.GenerateRequest]:
        """Eight requests that share only checkpoint and size: they join and leave each
        other's U-Net passes at different steps. With `loras`, a third use `bench-a`, a third
        `bench-b`, the rest none: each row of a shared pass gets its own LoRA."""
        steps = self.args.steps
        tags = ("<lora:bench-a:0.8>", "<lora:bench-b:1>", "") if loras else ("",)
        return [
            self.request(
                seed=200 + i,
                prompt=f"{PROMPT}, variant {i} {tags[i // 2 % len(tags)]}".rstrip(),
                steps=max(1, round(steps * (0.75, 1.0, 1.25)[i % 3])),
                cfg_scale=(7.0, 5.0)[i % 2],
            )
            for i in range(8)
        ]

    def pixels_moved_by_deep_cache(self, client: GeneratorClient) -> float:
        """Mean change (of 255 levels) DeepCache makes to the benchmark's image."""
        pictures = [
            np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=np.float32)
            for interval in (0, DEEP_CACHE_INTERVAL)
            for image in client.generate_images(self.request(deep_cache_interval=interval))
        ]
        return float(np.abs(pictures[0] - pictures[1]).mean())

    def end_to_end_rows(self, one_image: dict[str, list[float]], moved: float) -> list[str]:
        median = statistics.median
        plain, service, gateway = one_image["plain"], one_image["grpc"], one_image["gateway"]
        grpc_ratio = median(service) / median(plain)
        gateway_ratio = median(gateway) / median(plain)
        precision = self.args.precision
        rows = [
            f"| one image, gRPC end to end vs plain diffusers in-process | {spread(service)} "
            f"| {spread(plain)} | {grpc_ratio:.3f}× | ≤ 1.05× {_verdict(grpc_ratio <= 1.05)} |",
            "| one image through the gateway (HTTP, stored in the gallery, PNG fetched) vs "
            f"plain diffusers in-process | {spread(gateway)} | {spread(plain)} "
            f"| {gateway_ratio:.3f}× | ≤ 1.03× {_verdict(gateway_ratio <= 1.03)} |",
        ]
        cached = one_image["deep cache"]
        rows.append(
            f"| one image with DeepCache (interval {DEEP_CACHE_INTERVAL}) vs without, gRPC "
            f"| {spread(cached)} | {spread(service)} | {median(service) / median(cached):.2f}× "
            f"faster | (a user's choice; pixels move {moved:.1f} of 255 on "
            "average) |"
        )
        if "plain float32" in one_image:
            reference = one_image["plain float32"]
            gain = median(reference) / median(gateway)
            rows.append(
                f"| one image through the gateway in {precision} vs plain diffusers in float32 "
                f"(its default) | {spread(gateway)} | {spread(reference)} | {gain:.2f}× faster "
                f"| ≥ 1× {_verdict(gain >= 1)} |"
            )
        return rows

    def other_rows(self, batching, ceiling, keep, switch, cold, warm) -> list[str]:
        median = statistics.median
        switch_cost = median(switch) / median(keep) - 1
        return [
            *(
                f"| {label}: concurrent vs sequential | {spread(concurrent)} "
                f"| {spread(sequential)} | {median(sequential) / median(concurrent):.2f}× faster "
                f"| ≥ 1.5× {_verdict(median(sequential) / median(concurrent) >= 1.5)} |"
                for label, (sequential, concurrent) in batching.items()
            ),
            f"| plain diffusers, for reference: 8 images in one batch vs one after another "
            f"| {spread(ceiling[1])} | {spread(ceiling[0])} "
            f"| {median(ceiling[0]) / median(ceiling[1]):.2f}× faster | (what batching can "
            "give on this machine) |",
            f"| LoRA switched every request vs kept | {spread(switch)} | {spread(keep)} "
            f"| {switch_cost:+.1%} per request | ≤ 3% {_verdict(switch_cost <= 0.03)} |",
            f"| first request on a checkpoint not loaded vs cached | {cold:.3f} s "
            f"| {spread(warm)} | {cold / median(warm):.2f}× | (recorded) |",
        ]

    def section(self, rows: list[str]) -> str:
        a = self.args
        model = " on the SD 1.5 architecture" if a.arch == "sd15" else ""
        model += f", {a.precision}" if a.precision != "float32" else ""
        model += f", U-Net compiled ({a.compile})" if a.compile != "off" else ""
        warm_ups = 1 if a.arch == "sd15" else WARM_UPS
        return "\n".join(
            [
                f"### {a.size}×{a.size}, {a.steps} steps{model}",
                "",
                f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; torch "
                f"{torch.__version__}, diffusers {diffusers.__version__}; "
                f"{a.repeats} timed repeats ({self.batch_repeats} for the batches of 8), "
                f"the sides of each row in turns, after {warm_ups} warm-up(s) of each. "
                f"Command: `.venv/bin/python -m bench.generator {' '.join(sys.argv[1:])}`.",
                "",
                "| measure | sdstack | reference | ratio | goal |",
                "| --- | --- | --- | --- | --- |",
                *rows,
                "",
            ]
        )


def save_model(arch: str, folder: Path, tokenizer: Path) -> TinyModelFiles:
    """The benchmark's checkpoint: the tiny SD, or the SD 1.5 architecture (random
    weights) as one A1111-layout file."""
    if arch == "tiny":
        return save_tiny_model(folder, tokenizer)
    single_file = folder / "sd15-random.safetensors"
    save_single_file(build_pipeline(SD15, tokenizer), single_file, SD15)
    return TinyModelFiles(diffusers_dir=folder / "unused", single_file=single_file)


def _verdict(ok: bool) -> str:
    return "✅" if ok else "❌ not met"


def machine() -> str:
    cpu = platform.processor() or "CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{cpu}, {torch.get_num_threads()} threads, {memory} GiB, {gpu}"


def merge_subsections(header: str, old: str, new: list[str]) -> str:
    """The section with `new` subsections ("### …") in place of the old ones of the same
    title, the other old ones kept in their order, titles not seen before at the end."""
    fresh = {part.split("\n", 1)[0]: part for part in new}
    kept = [part for part in re.split(r"\n(?=### )", old) if part.startswith("### ")]
    merged = [fresh.pop(part.split("\n", 1)[0], part.rstrip() + "\n") for part in kept]
    return "\n".join([header, *merged, *fresh.values()])


def _current_section(title: str = "## Generator") -> str:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start = text.find(title)
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else len(text)]


def write_section(section: str, title: str = "## Generator") -> None:
    """Replaces this benchmark's section of RESULTS.md, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    start = text.find(title)
    if start >= 0:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + text[end + 1 if end >= 0 else len(text) :]
    RESULTS.write_text(text.rstrip() + "\n\n" + section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=("tiny", "sd15"),
        help="model per size: tiny (default) or sd15 (end to end rows only)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("float32", "bfloat16", "float16"),
        help="weights' dtype per size, service and plain diffusers alike (default float32)",
    )
    parser.add_argument(
        "--compiles",
        nargs="+",
        choices=("off", "default", "max-autotune"),
        help="the service's SDSTACK_COMPILE_UNET per size (default off; plain diffusers "
        "stays eager)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizer", default=".data/clip/tokenizer")
    args = parser.parse_args()
    parts = []
    archs = args.archs or ["tiny"] * len(args.sizes)
    precisions = args.precisions or ["float32"] * len(args.sizes)
    compiles = args.compiles or ["off"] * len(args.sizes)
    runs = zip(args.sizes, args.steps, archs, precisions, compiles, strict=True)
    for size, steps, arch, precision, compile_mode in runs:
        per_size = {
            "size": size,
            "steps": steps,
            "arch": arch,
            "precision": precision,
            "compile": compile_mode,
        }
        run = argparse.Namespace(**{**vars(args), **per_size})
        with tempfile.TemporaryDirectory(prefix="sdstack-bench-") as folder:
            parts.append(Bench(run, Path(folder)).run())
    section = merge_subsections(HEADER, _current_section(), parts)
    write_section(section)
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
