"""Trainer benchmark: sdstack's LoRA training loop against a minimal plain diffusers + peft
loop, same run, same tiny model, data, LoRA layers, rank, optimizer and batch.

    .venv/bin/python -m bench.trainer [--resolution 128] [--steps 40] [--batch 2]

The reference trains the way diffusers' example `train_text_to_image_lora.py` does: every
step encodes the pictures with the VAE and the captions with the text encoder. sdstack runs
once with nothing cached (goal ≥ 1.0×) and once with cached latents and text embeddings
(goal ≥ 1.3×). Each variant runs in a fresh process so its peak memory (max RSS on the CPU,
`torch.cuda.max_memory_allocated` on a GPU) is its own. Results go to bench/RESULTS.md
(section "Trainer"), with the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import diffusers
import torch

from bench.generator import write_section

WARMUP = 5


def _pictures(count: int, side: int) -> list:
    from tests.trainer_support import striped_picture

    return [striped_picture(i, side) for i in range(count)]


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reference(args: argparse.Namespace) -> tuple[float, int]:
    """diffusers' example loop, minimal: VAE and text encoder run every step."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    from services.generator.tiny_model import build_tiny_pipeline
    from services.trainer.lora_format import UNET_TARGETS
    from services.trainer.training import to_tensor

    device = torch.device(args.device)
    pipe = build_tiny_pipeline(Path(args.tokenizer)).to(device)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=list(UNET_TARGETS))
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    schedule = get_scheduler("constant", optimizer, num_training_steps=args.steps + WARMUP)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pixels = torch.stack([to_tensor(p) for p in _pictures(args.images, args.resolution)])
    ids = pipe.tokenizer(
        ["sks stripes, red"] * args.images,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    generator = torch.Generator().manual_seed(0)
    unet.train()
    started = 0.0
    for step in range(args.steps + WARMUP):
        if step == WARMUP:
            started = time.perf_counter()
        batch = torch.randint(0, args.images, (args.batch,), generator=generator)
        latents = vae.encode(pixels[batch].to(device)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (args.batch,), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        conditions = text_encoder(ids[batch].to(device), return_dict=False)[0]
        predicted = unet(noisy, timesteps, conditions, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(predicted.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps / (time.perf_counter() - started), _peak_bytes(device)


def sdstack(args: argparse.Namespace, cached: bool) -> tuple[float, int]:
    from services.generator.tiny_model import build_tiny_pipeline
    from services.trainer.config import MixedPrecision, RequestedConfig, resolve_config
    from services.trainer.training import LoraTrainer, TrainingHooks, TrainingImage

    device = torch.device(args.device)
    config = resolve_config(
        RequestedConfig(
            dataset_id="a" * 32,
            base_model="tiny",
            output_name="bench",
            network_dim=args.rank,
            network_alpha=args.rank,
            learning_rate=1e-4,
            lr_scheduler="constant",
            epochs=1,
            batch_size=args.batch,
            resolution=args.resolution,
            repeats=(args.steps + WARMUP) * args.batch // args.images + 1,
            seed=0,
            cache_latents=cached,
            cache_text_embeddings=cached,
            mixed_precision=MixedPrecision.NO,
        )
    )
    images = [
        TrainingImage(p, "sks stripes, red", 1) for p in _pictures(args.images, args.resolution)
    ]
    marks: dict[int, float] = {}

    def progress(step: int, *_: float) -> None:
        if step in (WARMUP, WARMUP + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as folder:
        trainer = LoraTrainer(
            build_tiny_pipeline(Path(args.tokenizer)),
            images,
            config,
            total_steps=args.steps + WARMUP,
            state_dir=Path(folder),
            device=device,
            hooks=TrainingHooks(on_progress=progress),
        )
        trainer.train()
    return args.steps / (marks[WARMUP + args.steps] - marks[WARMUP]), _peak_bytes(device)


def _run(variant: str, args: argparse.Namespace, queue: multiprocessing.Queue) -> None:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as sdstack does on the CPU; a fair race for both loops
    if variant == "reference":
        queue.put(reference(args))
    else:
        queue.put(sdstack(args, cached=variant == "cached"))


def measure(variant: str, args: argparse.Namespace) -> tuple[float, int]:
    """One variant in a fresh process (its own peak memory)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(variant, args, queue))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    return result


def _machine(device: str) -> str:
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} threads, {memory} GiB, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokenizer", default=".data/clip/tokenizer")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()
    results = {v: measure(v, args) for v in ("reference", "uncached", "cached")}
    base_rate, base_peak = results["reference"]
    rows = []
    goals = {
        "uncached": ("nothing cached", 1.0),
        "cached": ("cached latents + text embeddings", 1.3),
    }
    for variant, (label, goal) in goals.items():
        rate, peak = results[variant]
        ratio = rate / base_rate
        verdict = "✅" if ratio >= goal else "❌ not met"
        rows.append(
            f"| sdstack, {label} | {rate:.2f} steps/s | {base_rate:.2f} steps/s | {ratio:.2f}× "
            f"| ≥ {goal}× {verdict} | {peak / 2**20:.0f} MiB vs {base_peak / 2**20:.0f} MiB |"
        )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            f"### {args.resolution}×{args.resolution}, batch {args.batch}, "
            f"rank {args.rank}, {args.device}",
            "",
            f"Run {when} on {_machine(args.device)}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}; {args.steps} timed steps after {WARMUP} warm-up, "
            f"{args.images} images.",
            "",
            "| run | sdstack | reference | ratio | goal | peak memory (sdstack vs reference) |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    print(section)  # noqa: T201
    if not args.no_write:
        write_section("## Trainer\n\n" + INTRO + section, title="## Trainer")


INTRO = """Training steps/s of sdstack's loop (`services/trainer/training.py`) against a minimal
plain diffusers + peft loop written the way diffusers' `train_text_to_image_lora.py` trains
(VAE encode and text encode every step), in the same run on the project's tiny SD: same
LoRA layers (attention projections and feed-forward of the U-Net), rank, AdamW, constant
LR, batch and pictures; fp32. Both loops flush subnormal floats to zero (sdstack does so on
the CPU: without it either loop can slow down 10-40× once subnormals appear). Peak memory
is the max RSS of each variant's own process on the CPU (`torch.cuda.max_memory_allocated`
on a GPU). Command: `.venv/bin/python -m bench.trainer`.

"""


if __name__ == "__main__":
    main()
