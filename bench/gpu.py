"""GPU benchmark (SPEC §11): the full SD 1.5 architecture against the FLOP limit.

    .venv/bin/python -m bench.gpu [--size 512] [--steps 25] [--batches 1 4 8] [--repeats 5]
                                  [--variants classic sdpa channels_last compile cuda_graphs]
                                  [--peak-tflops N] [--device cuda] [--quick]

The SD 1.5 U-Net, VAE and text encoder with random weights (`tiny_model.build_pipeline(SD15)`:
speed does not depend on the weights' values), in fp16 on a GPU (fp32 on the CPU). For each
variant and batch size:

- U-Net it/s: denoising steps per second with classifier-free guidance (2 × batch rows);
- images/s: whole images per second at `--steps` steps (Euler a, VAE decode included);
- peak memory: `torch.cuda.max_memory_allocated` (on the CPU the process's peak RSS so far);
- TFLOP/s: the FLOPs of one U-Net pass, counted by `torch.utils.flop_counter` on the real
  module, over its measured time, and that as a fraction of the device's dense fp16 peak.

Variants, each against `sdpa` (what plain diffusers runs by default) in the same run:
`classic` (diffusers' attention before SDPA), `sdpa`, `channels_last` (SDPA + channels-last
U-Net and VAE), `compile` (that + `torch.compile` of the U-Net) and `cuda_graphs` (that with
`mode="reduce-overhead"`, which captures CUDA graphs). `compile_loras` is `compile` as the
generator runs it (`SDSTACK_COMPILE_UNET`: compiled in place) with two rank-32 LoRAs loaded,
half the rows with one and half with the other, the halves swapping LoRAs every pass: the
cost of per-row LoRAs on a compiled U-Net, and the graphs compiled while they swap (0 is the
goal). Compilation happens in the warm-up and is reported, not timed.

Without a CUDA device it stops unless asked for the CPU (`--device cpu` or `--quick`: a
128×128, 2-step smoke run of three variants, to check the script, not to measure).
Results go to bench/RESULTS.md (section "GPU: SD 1.5 architecture").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import diffusers
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from bench.generator import write_section
from services.common.sd.sd_configs import SD15
from services.generator.loras import LoraAdapters, LoraRequest, make_kohya_lora
from services.generator.model_cache import compile_unet
from services.generator.tiny_model import build_pipeline

TITLE = "## GPU: SD 1.5 architecture"
VARIANTS = ("classic", "sdpa", "channels_last", "compile", "cuda_graphs", "compile_loras")
CHANNELS_LAST = ("channels_last", "compile", "cuda_graphs", "compile_loras")
COMPILE_MODES = {"compile": "default", "cuda_graphs": "reduce-overhead", "compile_loras": "default"}
LORA_RANK = 32
REFERENCE = "sdpa"
TOKENS = 77

# Dense (no sparsity) fp16/bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
# Checked in order: the first name found in the device's name wins.
DENSE_FP16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
)


@dataclass(frozen=True)
class Measured:
    variant: str
    batch: int
    step_seconds: list[float]
    image_seconds: list[float]
    peak_bytes: int
    unet_flops: float
    compile_seconds: float
    recompiles: int | None = None
    """Graphs compiled during the timed passes (`compile_loras` only)."""

    @property
    def its(self) -> float:
        return 1 / statistics.median(self.step_seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch / statistics.median(self.image_seconds)

    @property
    def tflops(self) -> float:
        return self.unet_flops / statistics.median(self.step_seconds) / 1e12


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        base = build_pipeline(SD15, Path(args.tokenizer))
        base.scheduler = EulerAncestralDiscreteScheduler.from_config(base.scheduler.config)
        base.set_progress_bar_config(disable=True)
        self.base = base.to(self.device, self.dtype)
        hidden = SD15.text_encoder.hidden_size
        generator = torch.Generator("cpu").manual_seed(0)
        self.embeds = torch.randn(1, TOKENS, hidden, generator=generator).to(
            self.device, self.dtype
        )
        self.adapters: LoraAdapters | None = None
        self.loras: list[LoraRequest] = []

    def pipeline(self, variant: str) -> StableDiffusionPipeline:
        """The base weights with `variant`'s speed-ups (attention and memory layout are set
        in place, so every variant sets both)."""
        unet, vae = self.base.unet, self.base.vae
        unet.set_attn_processor(AttnProcessor() if variant == "classic" else AttnProcessor2_0())
        layout = torch.channels_last if variant in CHANNELS_LAST else torch.contiguous_format
        unet.to(memory_format=layout)
        vae.to(memory_format=layout)
        if variant == "compile_loras":
            return self.lora_pipeline()
        if variant in COMPILE_MODES:
            unet = torch.compile(unet, mode=COMPILE_MODES[variant], fullgraph=True)
        pipe = StableDiffusionPipeline(
            **{**self.base.components, "unet": unet, "vae": vae}, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def lora_pipeline(self) -> StableDiffusionPipeline:
        """A copy of the channels-last pipeline with two LoRAs loaded, its U-Net compiled in
        place as the generator compiles it (the copy counts in the variant's peak memory)."""
        pipe = copy.deepcopy(self.base)
        folder = Path(tempfile.mkdtemp(prefix="sdstack-bench-gpu-"))
        files = [
            make_kohya_lora(
                pipe, folder / f"bench-lora-{seed}.safetensors", rank=LORA_RANK, seed=seed
            )
            for seed in (1, 2)
        ]
        self.adapters = LoraAdapters(pipe)
        self.loras = [LoraRequest(path.stem, path) for path in files]
        self.adapters.apply(self.loras)
        compile_unet(pipe.unet, mode=COMPILE_MODES["compile_loras"])
        return pipe

    def lora_rows(self, batch: int) -> Callable[[], AbstractContextManager[None]]:
        """Each pass's rows: half with one LoRA, half with the other, swapped every pass."""
        adapters = self.adapters
        assert adapters is not None, "lora_pipeline() first"
        mixes = [adapters.unet_mix([lora]) for lora in self.loras]
        halves = [slice(0, batch), slice(batch, 2 * batch)]
        ab, ba = (list(zip(order, halves, strict=True)) for order in (mixes, mixes[::-1]))
        swaps = itertools.cycle([ab, ba])
        return lambda: adapters.per_row(next(swaps))

    def measure(self, variant: str, batch: int, flops: float) -> Measured:
        pipe = self.pipeline(variant)
        sample, timestep, embeds = self.unet_inputs(batch)
        if variant in CHANNELS_LAST:
            sample = sample.to(memory_format=torch.channels_last)
        rows = self.lora_rows(batch) if variant == "compile_loras" else contextlib.nullcontext

        @torch.no_grad()
        def unet_pass() -> None:
            with rows():
                pipe.unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)

        def image_batch() -> None:
            pipe(
                prompt_embeds=self.embeds.repeat(batch, 1, 1),
                negative_prompt_embeds=torch.zeros_like(self.embeds).repeat(batch, 1, 1),
                width=self.args.size,
                height=self.args.size,
                num_inference_steps=self.args.steps,
                generator=torch.Generator("cpu").manual_seed(batch),
            )

        self.reset_peak()
        started = time.perf_counter()
        for _ in range(3):  # warm-up; for the compiled variants, the compilation
            unet_pass()
        self.sync()
        compile_seconds = time.perf_counter() - started if variant in COMPILE_MODES else 0.0
        graphs = compiled_graphs()
        steps = self.timed(unet_pass, self.args.repeats * 4)
        recompiles = compiled_graphs() - graphs if variant == "compile_loras" else None
        image_batch()
        images = self.timed(image_batch, self.args.repeats)
        peak = self.peak_bytes()
        self.adapters = None  # the LoRA variant's pipeline copy goes
        return Measured(variant, batch, steps, images, peak, flops, compile_seconds, recompiles)

    def unet_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One guided step's U-Net input for `batch` images: 2 × batch rows."""
        latent = self.args.size // 8
        generator = torch.Generator("cpu").manual_seed(batch)
        sample = torch.randn(2 * batch, 4, latent, latent, generator=generator)
        timestep = torch.tensor(500, device=self.device)
        embeds = self.embeds.repeat(2 * batch, 1, 1)
        return sample.to(self.device, self.dtype), timestep, embeds

    def unet_flops(self, batch: int) -> float:
        """FLOPs of one U-Net pass, counted on the eager module with diffusers' classic
        attention, whose matrix products the counter sees on every device (compilation and
        SDPA change how the arithmetic runs, not how much of it there is)."""
        self.pipeline("classic")
        sample, timestep, embeds = self.unet_inputs(batch)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self.base.unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)
        return float(counter.get_total_flops())

    def timed(self, run: Callable[[], None], repeats: int) -> list[float]:
        times = []
        for _ in range(repeats):
            self.sync()
            started = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - started)
        return times

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def run(self) -> list[Measured]:
        results = []
        for batch in self.args.batches:
            flops = self.unet_flops(batch)
            for variant in self.args.variants:
                sys.stdout.write(f"{variant}, batch {batch}…\n")
                sys.stdout.flush()
                results.append(self.measure(variant, batch, flops))
                torch._dynamo.reset()
        return results


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    return platform.processor() or "CPU"


def dense_peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((peak for key, peak in DENSE_FP16_PEAK_TFLOPS if key in name), None)


def report(results: list[Measured], args: argparse.Namespace, bench: Bench) -> str:
    name = device_name(bench.device)
    peak = dense_peak_tflops(name, args.peak_tflops)
    reference = {m.batch: m for m in results if m.variant == REFERENCE}
    rows = [
        "| batch | variant | U-Net it/s | vs sdpa | images/s | vs sdpa | peak memory "
        "| U-Net TFLOP/s | of peak | compile s | compiled while LoRAs swap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in results:
        ref = reference.get(m.batch)
        fraction = f"{m.tflops / peak:.1%}" if peak else "(peak unknown)"
        rows.append(
            f"| {m.batch} | {m.variant} | {m.its:.2f} ({_spread(m.step_seconds, inverse=True)}) "
            f"| {_ratio(m.its, ref.its if ref else None)} | {m.images_per_second:.3f} "
            f"| {_ratio(m.images_per_second, ref.images_per_second if ref else None)} "
            f"| {m.peak_bytes / 2**30:.2f} GiB | {m.tflops:.3g} | {fraction} "
            f"| {m.compile_seconds:.0f} | {'–' if m.recompiles is None else m.recompiles} |"
        )
    smoke = (
        "\n**Smoke run (`--quick`): small settings to check the script, not a measurement.**\n"
        if args.quick
        else ""
    )
    flops = {m.batch: m.unet_flops for m in results}
    return "\n".join(
        [
            TITLE,
            "",
            "The SD 1.5 U-Net, VAE and text encoder with random weights, "
            f"{args.size}×{args.size}, {str(bench.dtype).removeprefix('torch.')}, Euler a, "
            f"CFG 7.5, {args.steps} steps per image. U-Net it/s: denoising steps per second "
            "(2 × batch rows, classifier-free guidance), median of "
            f"{args.repeats * 4} passes; images/s: median of {args.repeats} whole batches, "
            "VAE decode included. FLOPs per U-Net pass (torch.utils.flop_counter): "
            + ", ".join(f"batch {b}: {f / 1e12:.2f} TFLOP" for b, f in flops.items())
            + f". Device peak (dense fp16): {f'{peak:g} TFLOP/s' if peak else 'unknown'}. "
            "Command: `.venv/bin/python -m bench.gpu " + " ".join(sys.argv[1:]) + "`.",
            smoke,
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {name}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}.",
            "",
            *rows,
            "",
        ]
    )


def _spread(seconds: list[float], inverse: bool = False) -> str:
    low, high = min(seconds), max(seconds)
    if inverse:
        low, high = 1 / high, 1 / low
    return f"{low:.2f}–{high:.2f}"


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}×" if reference else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, help="the device's dense fp16 peak")
    parser.add_argument("--device", help="cuda (default when there is one) or cpu")
    parser.add_argument("--tokenizer", default=".data/clip/tokenizer")
    parser.add_argument("--quick", action="store_true", help="128², 2 steps: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.batches, args.repeats = 128, 2, [1], 1
        args.variants = ["classic", "sdpa", "channels_last"]
    if args.device is None:
        if not torch.cuda.is_available() and not args.quick:
            sys.stdout.write("bench.gpu: no CUDA device; --device cpu or --quick to run here\n")
            return
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    bench = Bench(args)
    section = report(bench.run(), args, bench)
    write_section(section, TITLE)
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
