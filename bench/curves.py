"""Cost curves (SPEC §11): how time grows with pixels, steps, batch and concurrency.

    .venv/bin/python -m bench.curves [--repeats 3] [--quick]

Measures on the real stack (local S3 and services on free ports in a temporary folder, the
project's tiny SD imported as a checkpoint), each point a median of `--repeats` timed runs
after warm-ups, with plain diffusers in-process at the same points, timed in turns with the
service while the stack is up:

1. time per image vs pixels (64²..384², 10 steps);
2. time per image vs steps (5..40, 128²);
3. time per image vs batch_size (1..8 images in one request, 128², 10 steps);
4. throughput vs concurrency (1, 2, 4, 8 gRPC requests at once, 128², 10 steps): the
   generator batches concurrent jobs step by step, so images/s should rise with N. Plain
   diffusers has no concurrency: its line is the N images one after another.

Each curve is drawn to bench/plots/<name>.png and tabulated in bench/RESULTS.md (section
"Cost curves"). `--quick` is a smoke run: 2 small points per curve, 1 repeat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import diffusers
import matplotlib
import torch
from diffusers import EulerAncestralDiscreteScheduler

from bench.generator import PROMPT, alternated, write_section
from sdstack.launcher import Stack, free_port_settings
from services.common.clients import GeneratorClient
from services.common.config import load_settings
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.sd.checkpoint_loader import load_pipeline
from services.generator.modes import initial_noise
from services.generator.tiny_model import TinyModelFiles, save_tiny_model

matplotlib.use("Agg")  # headless: chosen before pyplot is imported
import matplotlib.pyplot as plt

PLOTS = Path(__file__).with_name("plots")
TITLE = "## Cost curves"
SEED = 42


@dataclass(frozen=True)
class Point:
    """One measured setting; `images` is what one timed run produces."""

    size: int
    steps: int
    batch: int = 1
    concurrency: int = 1

    @property
    def images(self) -> int:
        return self.batch * self.concurrency


@dataclass(frozen=True)
class Curve:
    name: str
    title: str
    x_label: str
    axis: str  # the Point field that varies
    points: tuple[Point, ...]
    throughput: bool = False  # images/s (higher is better) instead of seconds per image

    def x(self, point: Point) -> int:
        return getattr(point, self.axis)

    def tick(self, point: Point) -> str:
        return f"{point.size}²" if self.axis == "size" else str(self.x(point))


def curves(quick: bool) -> list[Curve]:
    """The four curves; the quick ones are small enough for a smoke run on a busy CPU."""
    size, steps = (64, 5) if quick else (128, 10)
    sizes = (64, 128) if quick else (64, 128, 192, 256, 320, 384)
    step_counts = (5, 10) if quick else (5, 10, 20, 30, 40)
    counts = (1, 2) if quick else (1, 2, 4, 8)
    return [
        Curve(
            "pixels",
            f"Time per image vs pixels ({steps} steps, batch 1)",
            "image size (width × height)",
            "size",
            tuple(Point(s, steps) for s in sizes),
        ),
        Curve(
            "steps",
            f"Time per image vs steps ({size}², batch 1)",
            "sampling steps",
            "steps",
            tuple(Point(size, n) for n in step_counts),
        ),
        Curve(
            "batch",
            f"Time per image vs batch_size ({size}², {steps} steps, one request)",
            "batch_size (images in one request)",
            "batch",
            tuple(Point(size, steps, batch=n) for n in counts),
        ),
        Curve(
            "concurrency",
            f"Throughput vs concurrent requests ({size}², {steps} steps, 1 image each)",
            "concurrent gRPC requests",
            "concurrency",
            tuple(Point(size, steps, concurrency=n) for n in counts),
            throughput=True,
        ),
    ]


class PlainDiffusers:
    """`StableDiffusionPipeline` in-process on the same file, sampler and initial noise."""

    def __init__(self, files: TinyModelFiles, folder: Path, tokenizer: Path) -> None:
        self.pipe = load_pipeline(
            files.single_file, config_root=folder / "configs", tokenizer_dir=tokenizer
        )
        self.pipe.set_progress_bar_config(disable=True)
        # A1111 "Euler a", as the service's requests use
        self.pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            self.pipe.scheduler.config
        )

    def run(self, point: Point) -> None:
        """One batch of `point.batch` images; concurrency is measured as one image after
        another, the most an in-process pipeline can do with N requests."""
        seeds = [SEED + i for i in range(point.batch)]
        latent = point.size // 8
        for _ in range(point.concurrency):
            self.pipe(
                PROMPT,
                width=point.size,
                height=point.size,
                num_inference_steps=point.steps,
                num_images_per_prompt=point.batch,
                latents=initial_noise((4, latent, latent), seeds),
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            )


class Service:
    """The generator's gRPC API: one request of `batch` images, `concurrency` at once."""

    def __init__(self, client: GeneratorClient) -> None:
        self.client = client

    def request(self, point: Point, seed: int) -> generator_pb2.GenerateRequest:
        params = common_pb2.GenerationParams(
            prompt=PROMPT,
            seed=seed,
            width=point.size,
            height=point.size,
            steps=point.steps,
            batch_size=point.batch,
            sampler="Euler a",
            model="bench",
        )
        return generator_pb2.GenerateRequest(params=params)

    def run(self, point: Point) -> None:
        requests = [self.request(point, SEED + 100 * i) for i in range(point.concurrency)]
        if len(requests) == 1:
            self._generate(requests[0])
            return
        threads = [threading.Thread(target=self._generate, args=(r,)) for r in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _generate(self, request: generator_pb2.GenerateRequest) -> None:
        images = self.client.generate_images(request)
        if len(images) != request.params.batch_size:
            raise RuntimeError(f"expected {request.params.batch_size} images, got {len(images)}")


def measure(
    service: Service, plain: PlainDiffusers, points: list[Point], repeats: int
) -> tuple[dict[Point, list[float]], dict[Point, list[float]]]:
    """Each distinct point once, however many curves share it: sdstack and plain diffusers
    in turns (A B, B A, …) after warm-ups of both, so a machine that gets busier or quieter
    weighs on both sides alike."""
    ours: dict[Point, list[float]] = {}
    theirs: dict[Point, list[float]] = {}
    for point in dict.fromkeys(points):
        ours[point], theirs[point] = alternated(
            lambda p=point: service.run(p), lambda p=point: plain.run(p), repeats=repeats
        )
        sys.stdout.write(
            f"  {point}: sdstack {statistics.median(ours[point]):.3f} s, "
            f"plain {statistics.median(theirs[point]):.3f} s\n"
        )
        sys.stdout.flush()
    return ours, theirs


@contextmanager
def running_stack(folder: Path, tokenizer: Path, files: TinyModelFiles) -> Iterator[Service]:
    settings = load_settings(
        data_dir=folder / "stack",
        clip_tokenizer_dir=tokenizer,
        s3_endpoint="",
        log_level="WARNING",
        queue_size=64,
        precision="float32",  # plain diffusers' default, which the curves compare against
        **free_port_settings(),
    )
    stack = Stack(settings)
    stack.start()
    try:
        with GeneratorClient(settings.target("generator"), timeout=600) as client:
            client.import_model(
                files.single_file,
                name="bench",
                kind=common_pb2.MODEL_KIND_CHECKPOINT,
                file_format="safetensors",
            )
            yield Service(client)
    finally:
        stack.stop()


@dataclass(frozen=True)
class Row:
    """One point of a curve: per-image seconds (or images/s) of both, one per repeat."""

    point: Point
    ours: list[float]
    plain: list[float]


def per_image(curve: Curve, point: Point, times: list[float]) -> list[float]:
    """Seconds per image, or images per second for a throughput curve."""
    if curve.throughput:
        return [point.images / t for t in times]
    return [t / point.images for t in times]


def rows(
    curve: Curve, ours: dict[Point, list[float]], plain: dict[Point, list[float]]
) -> list[Row]:
    return [
        Row(
            point,
            per_image(curve, point, ours[point]),
            per_image(curve, point, plain[point]),
        )
        for point in curve.points
    ]


def cell(numbers: list[float]) -> str:
    return f"{statistics.median(numbers):.3f} ({min(numbers):.3f}–{max(numbers):.3f})"


def table(curve: Curve, data: list[Row]) -> list[str]:
    unit = "images/s" if curve.throughput else "s per image"
    lines = [
        f"| {curve.x_label} | sdstack {unit} | plain diffusers {unit} | sdstack ÷ plain |",
        "| --- | --- | --- | --- |",
    ]
    for row in data:
        share = statistics.median(row.ours) / statistics.median(row.plain)
        lines.append(
            f"| {curve.tick(row.point)} | {cell(row.ours)} | {cell(row.plain)} | {share:.2f}× |"
        )
    return lines


def growth(curve: Curve, data: list[Row]) -> str:
    """One line: how much the figure changed from the first point to the last."""
    first, last = data[0], data[-1]
    ours = statistics.median(last.ours) / statistics.median(first.ours)
    plain = statistics.median(last.plain) / statistics.median(first.plain)
    span = f"from {curve.tick(first.point)} to {curve.tick(last.point)}"
    if curve.throughput:
        return (
            f"Throughput {span} concurrent requests: ×{ours:.2f} for sdstack (plain diffusers, "
            f"one at a time: ×{plain:.2f})."
        )
    a, b = curve.x(first.point), curve.x(last.point)
    scale = (b / a) ** 2 if curve.axis == "size" else b / a
    what = "pixels" if curve.axis == "size" else curve.axis
    return (
        f"Time per image {span} (×{scale:g} the {what}): ×{ours:.2f} for sdstack, "
        f"×{plain:.2f} for plain diffusers."
    )


def plot(curve: Curve, data: list[Row], where: str, quick: bool) -> Path:
    """Both lines with min–max error bars; pixels on a linear axis of width × height."""
    xs = [r.point.size**2 if curve.axis == "size" else curve.x(r.point) for r in data]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, style, series in (
        ("sdstack (gRPC)", "o-", [r.ours for r in data]),
        ("plain diffusers (in-process)", "s--", [r.plain for r in data]),
    ):
        medians = [statistics.median(s) for s in series]
        low = [m - min(s) for m, s in zip(medians, series, strict=True)]
        high = [max(s) - m for m, s in zip(medians, series, strict=True)]
        axes.errorbar(xs, medians, yerr=[low, high], fmt=style, capsize=3, label=label)
    axes.set_xticks(xs, [curve.tick(r.point) for r in data])
    axes.set_xlabel(curve.x_label)
    axes.set_ylabel("images per second" if curve.throughput else "seconds per image")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    note = " (quick smoke run)" if quick else ""
    axes.set_title(f"{curve.title}{note}\n{where}", fontsize=9)
    figure.tight_layout()
    PLOTS.mkdir(exist_ok=True)
    path = PLOTS / f"{curve.name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def machine() -> str:
    cpu = platform.processor() or "CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}"


def report(
    chosen: list[Curve], ours: dict, plain: dict, args: argparse.Namespace, where: str
) -> str:
    command = " ".join(["python -m bench.curves", *args.argv])
    lines = [
        TITLE,
        "",
        "How each cost grows, on the project's tiny SD (SD 1.x topology, random weights), "
        "Euler a, CFG 7. sdstack: a gRPC client calling the generator process (PNG with "
        "infotext included); plain diffusers: `StableDiffusionPipeline` in-process on the same "
        "single file with the same initial noise, timed in turns with the service while the stack "
        "is up. Each cell: median (min–max) of the timed repeats after warm-ups of both. "
        "Throughput vs concurrency: N "
        "requests of one image sent at once (the generator batches them step by step); plain "
        "diffusers' line there is one image after another. Command: "
        f"`.venv/bin/{command}`.",
        "",
    ]
    if args.quick:
        lines += [
            "**Quick smoke run (`--quick`): 2 small points per curve, 1 repeat, on a shared "
            "CPU. It shows the benchmark works; the figures are not a measurement.** The real "
            "curves are pending `python -m bench.curves` on an idle machine.",
            "",
        ]
    lines += [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {where}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, matplotlib {matplotlib.__version__}; "
        f"{args.repeats} timed repeat(s) per point.",
        "",
    ]
    for curve in chosen:
        data = rows(curve, ours, plain)
        path = PLOTS / f"{curve.name}.png"
        if not args.no_write:  # a print-only run leaves the recorded plots alone
            plot(curve, data, where, args.quick)
        lines += [
            f"### {curve.title}",
            "",
            f"![{curve.title}](plots/{path.name})",
            "",
            *table(curve, data),
            "",
            growth(curve, data),
            "",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    chosen = curves(args.quick)
    points = [p for c in chosen for p in c.points]
    tokenizer = Path(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="sdstack-curves-") as name:
        folder = Path(name)
        files = save_tiny_model(folder / "model", tokenizer)
        with running_stack(folder, tokenizer, files) as service:
            reference = PlainDiffusers(files, folder, tokenizer)
            ours, plain = measure(service, reference, points, args.repeats)
    return report(chosen, ours, plain, args, machine())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 points, 1 repeat")
    parser.add_argument("--tokenizer", default=".data/clip/tokenizer")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.repeats = 1
    section = run(args)
    sys.stdout.write(section)
    if not args.no_write:
        write_section(section, title=TITLE)


if __name__ == "__main__":
    main()
