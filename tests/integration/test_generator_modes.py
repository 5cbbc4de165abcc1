"""Every generation mode and option through the generator's gRPC API, on the tiny model.

Files (LoRAs, a VAE, an ESRGAN upscaler) are made for the tiny model and imported into the
running stack's store the way users import them, then used by name.
"""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file, save_file

from services.common.clients import GeneratorClient
from services.common.errors import RemoteError
from services.common.infotext import parse_infotext, parse_lora_hashes
from services.common.object_store import LORAS_BUCKET
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.sd.checkpoint_layout import to_compvis_state_dict
from services.generator.demo_model import DEMO_MODEL_NAME
from services.generator.loras import make_diffusers_lora, make_kohya_lora
from services.generator.samplers import SAMPLERS
from services.generator.taesd import make_taesd_file
from services.generator.upscalers import make_esrgan_file
from services.generator.vaes import make_vae_file
from tests.generator_support import metric
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

SIZE = 64


@pytest.fixture(scope="module")
def generator(running_stack: RunningStack) -> Iterator[GeneratorClient]:
    with GeneratorClient(running_stack.settings.target("generator"), timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_files) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )


@pytest.fixture(scope="module")
def imported(
    generator: GeneratorClient,
    tiny_pipe: StableDiffusionPipeline,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, common_pb2.ModelInfo]:
    """A LoRA, a second LoRA, a VAE and an upscaler, imported by name."""
    folder = tmp_path_factory.mktemp("model-files")
    files = {
        "oak-style": (
            make_kohya_lora(tiny_pipe, folder / "oak.safetensors", seed=1, scale=2.0),
            common_pb2.MODEL_KIND_LORA,
        ),
        "night-light": (
            make_kohya_lora(tiny_pipe, folder / "night.safetensors", seed=2, scale=2.0),
            common_pb2.MODEL_KIND_LORA,
        ),
        "warm-vae": (
            make_vae_file(tiny_pipe.vae, folder / "warm.safetensors", seed=3, strength=0.2),
            common_pb2.MODEL_KIND_VAE,
        ),
        "tiny-esrgan": (
            make_esrgan_file(folder / "esrgan.pth", layout="new", scale=4),
            common_pb2.MODEL_KIND_UPSCALER,
        ),
    }
    return {
        name: generator.import_model(
            path, name=name, kind=kind, file_format=path.suffix.lstrip(".")
        )
        for name, (path, kind) in files.items()
    }


def _run(generator: GeneratorClient, **fields: object) -> list[common_pb2.GeneratedImage]:
    params = {"prompt": "a pavilion", "seed": 7, "width": SIZE, "height": SIZE, "steps": 4}
    params.update(fields.pop("params", {}))  # type: ignore[arg-type]
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(**params),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    return generator.generate_images(request)


def _run_together(
    generator: GeneratorClient, asked: list[dict[str, object]]
) -> list[list[common_pb2.GeneratedImage]]:
    """Each of `asked` (params) as its own request, all in flight at once."""
    together: list[list[common_pb2.GeneratedImage]] = [[] for _ in asked]

    def run(i: int) -> None:
        together[i] = _run(generator, params=asked[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asked))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return together


def _pixels(image: common_pb2.GeneratedImage | bytes) -> np.ndarray:
    data = image if isinstance(image, bytes) else image.png
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    """As the generator sends previews: JPEG at quality 70."""
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="JPEG", quality=70)
    return out.getvalue()


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def base_image(generator: GeneratorClient) -> common_pb2.GeneratedImage:
    (image,) = _run(generator)
    return image


def test_every_listed_sampler_runs(generator: GeneratorClient) -> None:
    listed = {sampler.name for sampler in generator.list_samplers()}
    assert listed == set(SAMPLERS)
    for name in sorted(listed):
        (image,) = _run(generator, params={"sampler": name, "steps": 3})
        assert parse_infotext(image.infotext).params["Sampler"] == name


def test_prompt_weights_change_the_picture(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    (weighted,) = _run(generator, params={"prompt": "(a pavilion:1.5)"})
    (neutral,) = _run(generator, params={"prompt": "(a pavilion:1.0)"})
    assert not np.array_equal(_pixels(weighted), _pixels(base_image))
    assert np.array_equal(_pixels(neutral), _pixels(base_image))


def test_prompt_editing_switches_the_prompt_mid_run(generator: GeneratorClient) -> None:
    def picture(prompt: str) -> np.ndarray:
        (image,) = _run(generator, params={"prompt": prompt, "steps": 6})
        return _pixels(image)

    stone, glass = picture("a stone pavilion"), picture("a glass pavilion")
    edited = picture("a [stone:glass:0.5] pavilion")
    assert np.array_equal(picture("a [stone:glass:1.0] pavilion"), stone)
    assert np.array_equal(picture("a [stone:glass:0] pavilion"), glass)
    assert not np.array_equal(edited, stone) and not np.array_equal(edited, glass)
    alternating = picture("a [stone|glass] pavilion")
    assert not np.array_equal(alternating, stone) and not np.array_equal(alternating, edited)


def test_and_composes_sub_prompts_with_their_weights(generator: GeneratorClient) -> None:
    def picture(prompt: str) -> np.ndarray:
        (image,) = _run(generator, params={"prompt": prompt})
        return _pixels(image)

    stone, glass = picture("a stone pavilion"), picture("a glass pavilion")
    both = picture("a stone pavilion AND a glass pavilion")
    assert _mean_difference(both, stone) > 2 and _mean_difference(both, glass) > 2
    # weight 0 drops the second sub-prompt (the U-Net batch is larger: CPU rounding differs)
    assert np.abs(picture("a stone pavilion AND a glass pavilion :0") - stone).max() <= 2


def test_long_prompts_and_clip_skip_are_used(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    filler = ", ".join(["a quiet room"] * 30)
    (long_a,) = _run(generator, params={"prompt": f"{filler}, red"})
    (long_b,) = _run(generator, params={"prompt": f"{filler}, blue"})
    assert not np.array_equal(_pixels(long_a), _pixels(long_b)), "words past 77 tokens ignored"
    (skipped,) = _run(generator, params={"clip_skip": 2})
    assert not np.array_equal(_pixels(skipped), _pixels(base_image))
    assert parse_infotext(skipped.infotext).params["Clip skip"] == "2"


def test_lora_weight_zero_is_no_lora_and_leaves_no_trace(
    generator: GeneratorClient,
    imported: dict[str, common_pb2.ModelInfo],
    base_image: common_pb2.GeneratedImage,
) -> None:
    (zero,) = _run(generator, params={"prompt": "a pavilion <lora:oak-style:0>"})
    (full,) = _run(generator, params={"prompt": "a pavilion <lora:oak-style:1>"})
    both = _run(
        generator,
        params={
            "prompt": "a pavilion",
            "loras": [{"name": "oak-style", "weight": 1.0}, {"name": "night-light"}],
        },
    )[0]
    (after,) = _run(generator)
    assert np.array_equal(_pixels(zero), _pixels(base_image))
    assert not np.array_equal(_pixels(full), _pixels(base_image))
    assert not np.array_equal(_pixels(both), _pixels(full))
    assert np.array_equal(_pixels(after), _pixels(base_image)), "the LoRA left a trace"
    hashes = parse_infotext(both.infotext).params["Lora hashes"]
    oak = imported["oak-style"].short_hash
    assert f"oak-style: {oak}" in hashes and "night-light: " in hashes
    assert "<lora:oak-style:1>" in parse_infotext(full.infotext).prompt


def test_each_image_reports_the_settings_that_made_it(
    generator: GeneratorClient, imported: dict[str, common_pb2.ModelInfo]
) -> None:
    first, second = _run(
        generator,
        params={"prompt": "a pavilion <lora:oak-style:0.8>", "vae": "warm-vae", "batch_size": 2},
    )
    assert (first.params.seed, second.params.seed) == (7, 8)
    used = first.params
    assert (used.model, used.sampler, used.steps, used.cfg_scale) == (
        DEMO_MODEL_NAME,
        "Euler a",
        4,
        7.0,
    )
    # The prompt as encoded, its tag's LoRA in `loras`: sent back, the LoRA applies once.
    assert used.prompt == "a pavilion "
    (lora,) = used.loras
    assert (lora.name, lora.short_hash) == ("oak-style", imported["oak-style"].short_hash)
    assert lora.weight == pytest.approx(0.8)
    assert used.vae == "warm-vae" and first.vae_sha256 == imported["warm-vae"].sha256


def test_loras_are_listed_with_their_kohya_metadata(
    generator: GeneratorClient, imported: dict[str, common_pb2.ModelInfo]
) -> None:
    listed = {m.name: m for m in generator.list_models(common_pb2.MODEL_KIND_LORA).models}
    metadata = listed["oak-style"].metadata
    assert metadata["ss_network_dim"] == "4"
    assert metadata["ss_output_name"] == "oak"
    assert metadata["ss_base_model_version"] == "sd_v1"


def _a1111_lora_hash(path: Path) -> str:
    """What A1111 writes in `Lora hashes` for a safetensors LoRA, by its rule (kohya's
    addnet hash): skip the 8-byte little-endian header length n and the n header bytes,
    sha256 the rest, keep 12 hex."""
    with path.open("rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        file.seek(8 + header_length)
        return hashlib.sha256(file.read()).hexdigest()[:12]


def test_lora_hashes_are_a1111s_and_survive_new_metadata(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_pipe: StableDiffusionPipeline,
    tmp_path: Path,
) -> None:
    """The same tensors saved with other metadata (a re-save, an edited description) are
    the same LoRA to A1111 and Civitai: imported, or put into the bucket by another tool,
    they get its hash, in the listing, the infotext and the image's settings."""
    original = make_kohya_lora(tiny_pipe, tmp_path / "fig.safetensors", seed=5, scale=2.0)
    tensors = load_file(original)
    resaved = tmp_path / "fig-resaved.safetensors"
    save_file(tensors, resaved, metadata={"ss_output_name": "fig", "ss_training_comment": "v2"})
    foreign = tmp_path / "fig-foreign.safetensors"
    save_file(tensors, foreign, metadata={"ss_output_name": "figs", "modelspec.title": "Figs"})
    files = {"fig-style": original, "fig-resaved": resaved, "fig-foreign": foreign}
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in files.values()}) == 3
    expected = _a1111_lora_hash(original)
    assert _a1111_lora_hash(resaved) == _a1111_lora_hash(foreign) == expected

    lora = common_pb2.MODEL_KIND_LORA
    for name in ("fig-style", "fig-resaved"):
        info = generator.import_model(files[name], name=name, kind=lora, file_format="safetensors")
        assert info.short_hash == expected
    store = running_stack.object_store()
    store.put_file(LORAS_BUCKET, "fig-foreign.safetensors", foreign)  # behind its back
    other = tmp_path / "dune-foreign.safetensors"
    save_file(load_file(make_kohya_lora(tiny_pipe, tmp_path / "dune.safetensors", seed=6)), other)
    store.put_file(LORAS_BUCKET, "dune-foreign.safetensors", other)
    try:
        listed = {m.name: m.short_hash for m in generator.list_models(lora).models}
        assert {name: listed[name] for name in files} == dict.fromkeys(files, expected)
        # Two foreign files (no recorded sha256) each list their own header metadata.
        metadata = {m.name: m.metadata for m in generator.list_models(lora).models}
        assert metadata["fig-foreign"]["modelspec.title"] == "Figs"
        assert "modelspec.title" not in metadata["dune-foreign"]
        prompt = "a pavilion <lora:fig-style:0.4> <lora:fig-resaved:0.3> <lora:fig-foreign:0.3>"
        (image,) = _run(generator, params={"prompt": prompt})
        written = parse_lora_hashes(parse_infotext(image.infotext).params["Lora hashes"])
        assert written == dict.fromkeys(files, expected)
        assert [(ref.name, ref.short_hash) for ref in image.params.loras] == [
            (name, expected) for name in files
        ]
    finally:
        for name in [*files, "dune-foreign"]:
            generator.stub.DeleteModel(generator_pb2.DeleteModelRequest(name=name, kind=lora))
        store.close()


def test_unknown_lora_is_a_clear_error(generator: GeneratorClient) -> None:
    with pytest.raises(RemoteError) as raised:
        _run(generator, params={"prompt": "x <lora:not-there:1>"})
    assert raised.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert "not-there" in raised.value.message


def _assert_matches_alone(
    running_stack: RunningStack,
    batched: common_pb2.GeneratedImage,
    alone: common_pb2.GeneratedImage,
    what: object,
) -> None:
    """A picture made in a shared batch equals the one made alone, within rounding: in float32
    every pixel within 2 levels. In bfloat16 a convolution can round differently for another
    batch size (oneDNN picks its algorithm by batch: measured in the tiny model's
    `up_blocks.1.resnets.0.conv1`, base weights, 6 rows vs 2), and the random model amplifies
    one such flip to ~10 levels on a few pixels, so there the bound is on the mean and the 99th
    percentile. A row given another job's LoRAs or features moves 12 levels or more on average."""
    moved = np.abs(_pixels(batched) - _pixels(alone))
    tolerance = running_stack.rounding_levels(2)
    if running_stack.generator_dtype == torch.float32:
        assert moved.max() <= tolerance, what
    else:
        assert moved.mean() <= 1.5 and np.percentile(moved, 99) <= tolerance, what


def _batched_jobs(running_stack: RunningStack) -> float:
    return metric(running_stack, "sdstack_generator_batched_jobs_total")


def test_concurrent_requests_with_different_loras_share_passes_and_match_alone(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_pipe: StableDiffusionPipeline,
    tmp_path: Path,
) -> None:
    """Step-level batching across LoRAs: three requests in flight together (one LoRA, two,
    none; different step counts) each make the picture they make alone.

    The LoRAs are mild (scale 0.5): with the strong ones of `imported`, the random tiny model
    turns a 10⁻⁶ change of its input into a different picture, so no two batch sizes agree.
    """
    for name, seed in (("mix-a", 11), ("mix-b", 12)):
        path = make_kohya_lora(tiny_pipe, tmp_path / f"{name}.safetensors", seed=seed)
        generator.import_model(
            path, name=name, kind=common_pb2.MODEL_KIND_LORA, file_format="safetensors"
        )
    prompts = [
        ("a pavilion <lora:mix-a:0.8>", 6),
        ("a pavilion <lora:mix-b:1> <lora:mix-a:0.5>", 4),
        ("a pavilion", 5),
    ]
    before = _batched_jobs(running_stack)
    asked = [{"prompt": prompt, "steps": steps} for prompt, steps in prompts]
    together = _run_together(generator, asked)
    assert _batched_jobs(running_stack) >= before + 2, "no two requests shared a U-Net pass"
    for (prompt, steps), (image,) in zip(prompts, together, strict=True):
        (alone,) = _run(generator, params={"prompt": prompt, "steps": steps})
        _assert_matches_alone(running_stack, image, alone, prompt)
    one, two, none = (_pixels(images[0]) for images in together)
    assert _mean_difference(one, none) > 1 and _mean_difference(two, one) > 1


def test_seamless_tiling_is_used_recorded_and_kept_to_its_own_job(
    running_stack: RunningStack, generator: GeneratorClient
) -> None:
    """A tiling request and a plain one in flight together: the shared U-Net and VAE switch
    padding for each job's turn, so each makes the picture it makes alone."""
    asked = [{"tiling": True, "steps": 8}, {"tiling": False, "steps": 8}]
    together = _run_together(generator, asked)
    (tiled,), (plain,) = together
    assert tiled.params.tiling and not plain.params.tiling
    assert parse_infotext(tiled.infotext).params["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain.infotext).params
    assert _mean_difference(_pixels(tiled), _pixels(plain)) > 1
    tolerance = running_stack.rounding_levels(2)
    for params, (image,) in zip(asked, together, strict=True):
        (alone,) = _run(generator, params=params)
        assert np.abs(_pixels(image) - _pixels(alone)).max() <= tolerance, params


def test_deep_cache_skips_deep_passes_per_job_and_matches_alone(
    running_stack: RunningStack, generator: GeneratorClient
) -> None:
    """DeepCache jobs in flight with a plain one: each job keeps and reuses its own rows'
    features, so each makes the picture it makes alone; the shallow passes are counted, and
    the picture stays close to the one without DeepCache."""
    asked = [
        {"deep_cache_interval": 3, "steps": 9},
        {"deep_cache_interval": 2, "steps": 6, "batch_size": 2},
        {"steps": 8},
    ]
    shallow_before = metric(running_stack, "sdstack_generator_unet_passes_total", path="shallow")
    together = _run_together(generator, asked)
    shallow = metric(running_stack, "sdstack_generator_unet_passes_total", path="shallow")
    assert shallow - shallow_before == 6 + 3  # 9 steps every 3rd whole, 6 steps every 2nd
    first = together[0][0]
    assert first.params.deep_cache_interval == 3
    assert parse_infotext(first.infotext).params["DeepCache interval"] == "3"
    # In bfloat16 a reused pass also carries its rounding on (a few pixels of the 9-step job
    # move 7 levels); a row mix-up moves ~40 on average.
    for params, images in zip(asked, together, strict=True):
        alone = _run(generator, params=params)
        for image, again in zip(images, alone, strict=True):
            _assert_matches_alone(running_stack, image, again, params)
    (uncached,) = _run(generator, params={"steps": 9})
    assert 0 < _mean_difference(_pixels(first), _pixels(uncached)) < 5


def test_deep_cache_interval_out_of_range_names_the_field(generator: GeneratorClient) -> None:
    with pytest.raises(RemoteError) as refused:
        _run(generator, params={"deep_cache_interval": 11})
    assert refused.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert "params.deep_cache_interval" in refused.value.message


def test_vae_choice_changes_the_picture_and_is_recorded(
    generator: GeneratorClient,
    imported: dict[str, common_pb2.ModelInfo],
    base_image: common_pb2.GeneratedImage,
) -> None:
    (with_vae,) = _run(generator, params={"vae": "warm-vae"})
    assert not np.array_equal(_pixels(with_vae), _pixels(base_image))
    params = parse_infotext(with_vae.infotext).params
    assert params["VAE"] == "warm-vae"
    assert params["VAE hash"] == imported["warm-vae"].short_hash
    (again,) = _run(generator)
    assert np.array_equal(_pixels(again), _pixels(base_image))


def test_img2img_strength_controls_how_far_it_departs(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    source = _pixels(base_image)

    def refine(strength: float) -> np.ndarray:
        (image,) = _run(
            generator,
            mode=generator_pb2.GENERATION_MODE_IMG2IMG,
            img2img={"init_image": {"data": base_image.png}, "denoising_strength": strength},
            params={"seed": 99, "steps": 10},
        )
        assert parse_infotext(image.infotext).params["Denoising strength"] == f"{strength:g}"
        return _pixels(image)

    low, high = refine(0.1), refine(0.9)
    assert _mean_difference(low, source) < _mean_difference(high, source)
    assert np.array_equal(refine(0.1), low), "the same seed gave another picture"


def test_inpaint_keeps_everything_outside_the_mask(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    for only_masked in (False, True):
        (image,) = _run(
            generator,
            mode=generator_pb2.GENERATION_MODE_INPAINT,
            img2img={"init_image": {"data": base_image.png}, "denoising_strength": 0.9},
            inpaint={"mask": {"data": out.getvalue()}, "mask_blur": 2, "only_masked": only_masked},
            params={"prompt": "a window", "seed": 3},
        )
        result, source = _pixels(image), _pixels(base_image)
        far_outside = np.ones((SIZE, SIZE), dtype=bool)
        far_outside[10:54, 10:54] = False
        assert np.array_equal(result[far_outside], source[far_outside])
        assert not np.array_equal(result[20:44, 20:44], source[20:44, 20:44])


def test_inpaint_mask_blur_per_axis(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 39, 39), fill=255)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    (image,) = _run(
        generator,
        mode=generator_pb2.GENERATION_MODE_INPAINT,
        img2img={"init_image": {"data": base_image.png}, "denoising_strength": 0.9},
        inpaint={"mask": {"data": out.getvalue()}, "mask_blur_x": 6, "mask_blur_y": 0},
        params={"prompt": "a window", "seed": 3},
    )
    changed = np.abs(_pixels(image) - _pixels(base_image)).sum(axis=2) > 0
    rows, columns = np.nonzero(changed)
    assert rows.min() >= 24 and rows.max() <= 39, "a vertical blur of 0 keeps rows outside"
    assert columns.min() < 24 or columns.max() > 39, "the horizontal blur widens the area"


def test_inpaint_mask_of_another_size_is_refused(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    with pytest.raises(RemoteError) as raised:
        _run(
            generator,
            mode=generator_pb2.GENERATION_MODE_INPAINT,
            img2img={"init_image": {"data": base_image.png}},
            inpaint={"mask": {"data": _png(np.full((32, 48, 3), 255))}},
        )
    assert raised.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert any(v.field == "inpaint.mask" for v in raised.value.violations)


def test_hires_fix_doubles_the_size(generator: GeneratorClient) -> None:
    for upscaler in ("Latent", "Lanczos", "tiny-esrgan"):
        (image,) = _run(
            generator,
            hires={"enabled": True, "scale": 2, "upscaler": upscaler, "second_pass_steps": 2},
        )
        assert (image.width, image.height) == (2 * SIZE, 2 * SIZE)
        params = parse_infotext(image.infotext).params
        assert (params["Hires upscale"], params["Hires upscaler"]) == ("2", upscaler)


def test_upscale_modes(
    generator: GeneratorClient,
    imported: dict[str, common_pb2.ModelInfo],
    base_image: common_pb2.GeneratedImage,
) -> None:
    names = {
        u.name for u in generator.stub.ListUpscalers(generator_pb2.ListUpscalersRequest()).upscalers
    }
    assert {"Lanczos", "tiny-esrgan"} <= names
    for upscaler, scale, tiled in (
        ("Lanczos", 2, False),
        ("tiny-esrgan", 4, False),
        ("Lanczos", 4, True),
    ):
        (image,) = _run(
            generator,
            mode=generator_pb2.GENERATION_MODE_UPSCALE,
            upscale={
                "image": {"data": base_image.png},
                "upscaler": upscaler,
                "scale": scale,
                "tiled_refine": tiled,
                "tile_size": 256,
                "tile_overlap": 64,
            },
        )
        assert (image.width, image.height) == (SIZE * scale, SIZE * scale)


def test_variations_subtle_departs_less_than_strong(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage
) -> None:
    source = _pixels(base_image)
    results = {}
    for strength in (
        generator_pb2.VARIATION_STRENGTH_SUBTLE,
        generator_pb2.VARIATION_STRENGTH_STRONG,
    ):
        images = _run(
            generator,
            mode=generator_pb2.GENERATION_MODE_VARIATION,
            variation={"source": {"data": base_image.png}, "strength": strength},
            params={"seed": 11, "batch_size": 4, "steps": 10},
        )
        assert [image.seed for image in images] == [11, 12, 13, 14]
        results[strength] = np.mean([_mean_difference(_pixels(i), source) for i in images])
    assert (
        results[generator_pb2.VARIATION_STRENGTH_SUBTLE]
        < results[generator_pb2.VARIATION_STRENGTH_STRONG]
    )


def test_variation_seed_strength_blends_two_seeds(generator: GeneratorClient) -> None:
    plain = {"sampler": "Euler", "seed": 5}
    (seed_image,) = _run(generator, params=plain)
    (subseed_image,) = _run(generator, params={**plain, "seed": 6})
    (none,) = _run(generator, params={**plain, "subseed": 6, "subseed_strength": 0.0})
    (full,) = _run(generator, params={**plain, "subseed": 6, "subseed_strength": 1.0})
    (half,) = _run(generator, params={**plain, "subseed": 6, "subseed_strength": 0.5})
    assert np.array_equal(_pixels(none), _pixels(seed_image))
    assert np.abs(_pixels(full) - _pixels(subseed_image)).max() <= 1
    assert not np.array_equal(_pixels(half), _pixels(seed_image))
    params = parse_infotext(half.infotext).params
    assert (params["Variation seed"], params["Variation seed strength"]) == ("6", "0.5")


def test_previews_come_with_progress(generator: GeneratorClient) -> None:
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(prompt="x", seed=1, width=SIZE, height=SIZE, steps=4),
        preview={"enabled": True, "every_n_steps": 2},
    )
    previews = [
        e.progress.preview_jpeg
        for e in generator.generate(request)
        if e.HasField("progress") and e.progress.preview_jpeg
    ]
    assert len(previews) == 2
    assert Image.open(io.BytesIO(previews[0])).format == "JPEG"


def _previews_and_image(
    generator: GeneratorClient, method: str
) -> tuple[list[np.ndarray], np.ndarray]:
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(
            prompt="x", seed=1, width=SIZE, height=SIZE, steps=4, sampler="Euler"
        ),
        preview={"enabled": True, "every_n_steps": 1, "max_size": SIZE, "method": method},
    )
    events = list(generator.generate(request))
    previews = [
        _pixels(e.progress.preview_jpeg)
        for e in events
        if e.HasField("progress") and e.progress.preview_jpeg
    ]
    (image,) = next(e.result.images for e in events if e.HasField("result"))
    return previews, _pixels(image)


def test_full_previews_show_the_picture_as_it_would_end(generator: GeneratorClient) -> None:
    """A1111's Full previews decode the sampler's estimate with the VAE: full size, and at
    Euler's last step the estimate is the result, so the last preview is the picture (but
    for JPEG). The default cheap ones are a latent-sized sketch."""
    full, image = _previews_and_image(generator, "Full")
    assert len(full) == 4 and all(p.shape == image.shape for p in full)
    as_jpeg = _pixels(_jpeg(image))  # previews travel as JPEG; the noisy tiny model's lose much
    distances = [_mean_difference(preview, as_jpeg) for preview in full]
    assert distances[-1] < 2
    # Each estimate is closer to the end than the one before, and the first is far from it.
    # Measured in float32 (CPUs without AMX): 5.9, 2.5, 0.3, 0; in bfloat16: 6.0, 3.1, 2.1, 0.
    assert distances == sorted(distances, reverse=True) and len(set(distances)) == len(distances)
    assert distances[0] > 3
    cheap, _ = _previews_and_image(generator, "Approx cheap")
    assert cheap[-1].shape == (SIZE // 8, SIZE // 8, 3)


def test_taesd_previews_use_the_imported_decoder(
    generator: GeneratorClient, tmp_path: Path
) -> None:
    """TAESD previews need a decoder of kind VAE_APPROX: refused by name without one; with
    one, full-size previews from it (a random decoder here, so unlike the VAE's)."""
    with pytest.raises(RemoteError) as refused:
        _previews_and_image(generator, "TAESD")
    assert refused.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert "preview.method" in refused.value.message
    generator.import_model(
        make_taesd_file(tmp_path / "taesd_decoder.safetensors", seed=3),
        name="taesd",
        kind=common_pb2.MODEL_KIND_VAE_APPROX,
        file_format="safetensors",
    )
    listed = generator.list_models(common_pb2.MODEL_KIND_VAE_APPROX).models
    assert [m.name for m in listed] == ["taesd"]
    taesd, image = _previews_and_image(generator, "TAESD")
    full, _ = _previews_and_image(generator, "Full")
    assert len(taesd) == 4 and taesd[-1].shape == image.shape
    assert _mean_difference(taesd[-1], full[-1]) > 1


def test_an_unknown_preview_method_names_the_field(generator: GeneratorClient) -> None:
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(prompt="x", width=SIZE, height=SIZE, steps=1),
        preview={"enabled": True, "method": "Approx NN"},
    )
    with pytest.raises(RemoteError) as refused:
        generator.generate_images(request)
    assert refused.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert "preview.method" in refused.value.message


def test_cancel_stops_within_a_step(generator: GeneratorClient) -> None:
    params = common_pb2.GenerationParams(prompt="x", seed=1, width=256, height=256, steps=150)
    stream = generator.stub.Generate(
        generator_pb2.GenerateRequest(request_id="stop-soon", params=params), timeout=120
    )
    steps_seen = 0
    for event in stream:
        if event.HasField("progress"):
            steps_seen = event.progress.step
            break
    assert generator.cancel("stop-soon")
    later = []
    with pytest.raises(grpc.RpcError) as raised:
        for event in stream:
            later.append(event.progress.step)
    assert raised.value.code() is grpc.StatusCode.CANCELLED
    assert len(later) <= 2, f"{len(later)} more steps ran after cancel (from step {steps_seen})"


def test_a_malicious_checkpoint_leaves_the_generator_serving(
    generator: GeneratorClient, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(b"\x80\x04cos\nsystem\nX\x05\x00\x00\x00touch\x85R.")
    with pytest.raises(RemoteError) as raised:
        generator.import_model(
            evil, name="evil2", kind=common_pb2.MODEL_KIND_CHECKPOINT, file_format="ckpt"
        )
    assert raised.value.status is grpc.StatusCode.INVALID_ARGUMENT
    assert generator.is_serving()
    assert len(_run(generator)) == 1


@pytest.mark.parametrize("fill", ["FILL", "ORIGINAL", "LATENT_NOISE", "LATENT_NOTHING"])
def test_every_inpaint_fill_keeps_the_outside(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage, fill: str
) -> None:
    mask = np.zeros((SIZE, SIZE, 3))
    mask[24:40, 24:40] = 255
    (image,) = _run(
        generator,
        mode=generator_pb2.GENERATION_MODE_INPAINT,
        img2img={"init_image": {"data": base_image.png}, "denoising_strength": 1.0},
        inpaint={
            "mask": {"data": _png(mask)},
            "mask_blur": 0,
            "fill": generator_pb2.InpaintFill.Value(f"INPAINT_FILL_{fill}"),
            "invert_mask": True,
        },
    )
    result, source = _pixels(image), _pixels(base_image)
    assert np.array_equal(result[26:38, 26:38], source[26:38, 26:38]), "inverted: centre kept"
    assert not np.array_equal(result[:16], source[:16])


@pytest.mark.parametrize(
    "resize_mode", ["JUST_RESIZE", "CROP_AND_RESIZE", "RESIZE_AND_FILL", "LATENT_UPSCALE"]
)
def test_img2img_resize_modes_give_the_asked_size(
    generator: GeneratorClient, base_image: common_pb2.GeneratedImage, resize_mode: str
) -> None:
    (image,) = _run(
        generator,
        mode=generator_pb2.GENERATION_MODE_IMG2IMG,
        img2img={
            "init_image": {"data": base_image.png},
            "resize_mode": generator_pb2.ResizeMode.Value(f"RESIZE_MODE_{resize_mode}"),
        },
        params={"width": 96, "height": 64},
    )
    assert (image.width, image.height) == (96, 64)


def test_diffusers_format_lora_and_ckpt_checkpoint_import_and_run(
    generator: GeneratorClient,
    tiny_pipe: StableDiffusionPipeline,
    base_image: common_pb2.GeneratedImage,
    tmp_path: Path,
) -> None:
    lora = make_diffusers_lora(tiny_pipe, tmp_path / "peft.safetensors", seed=4, scale=2.0)
    generator.import_model(
        lora, name="peft-style", kind=common_pb2.MODEL_KIND_LORA, file_format="safetensors"
    )
    (styled,) = _run(generator, params={"prompt": "a pavilion <lora:peft-style:1>"})
    assert not np.array_equal(_pixels(styled), _pixels(base_image))

    ckpt = tmp_path / "tiny.ckpt"
    state = to_compvis_state_dict(tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder)
    torch.save({"state_dict": state}, ckpt)
    model = generator.import_model(
        ckpt, name="tiny-ckpt", kind=common_pb2.MODEL_KIND_CHECKPOINT, file_format="ckpt"
    )
    assert model.title == f"tiny-ckpt.ckpt [{model.short_hash}]"
    (image,) = _run(generator, params={"model": "tiny-ckpt", "sampler": "Euler"})
    assert parse_infotext(image.infotext).params["Model"] == "tiny-ckpt"
    (after,) = _run(generator)
    assert np.array_equal(_pixels(after), _pixels(base_image)), "a LoRA outlived a model switch"


def test_a_job_past_its_deadline_is_stopped(generator: GeneratorClient) -> None:
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(prompt="x", seed=1, width=256, height=256, steps=150),
        timeout={"nanos": 300_000_000},
    )
    with pytest.raises(RemoteError) as raised:
        generator.generate_images(request)
    assert raised.value.status is grpc.StatusCode.DEADLINE_EXCEEDED


def test_generator_metrics_follow_the_work(
    running_stack: RunningStack, generator: GeneratorClient
) -> None:
    """SPEC §7: seconds per step, queue depth, model load seconds, cache hits, images."""

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        s = running_stack.settings
        url = f"http://{s.host}:{s.generator_metrics_port}/metrics"
        with urllib.request.urlopen(url) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    model = (("model", DEMO_MODEL_NAME),)
    before = scrape()
    _run(generator, params={"steps": 3, "batch_size": 2, "seed": 41})
    after = scrape()

    def grew(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("sdstack_images_generated_total", model) == 2
    assert grew("sdstack_seconds_per_step_count", model) == 3
    assert grew("sdstack_model_cache_requests_total", (("result", "loaded"),)) >= 1
    assert after[("sdstack_model_load_seconds_count", model)] >= 1
    assert after[("sdstack_generator_queue_depth", ())] == 0
