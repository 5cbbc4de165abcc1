"""LoRAs as peft adapters on the tiny model: formats, weights, switching, exact base restore."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from services.common.errors import InvalidArgument, NotFound
from services.common.sd import checkpoint_loader
from services.generator.loras import (
    LoraAdapters,
    LoraRequest,
    check_lora_fits,
    inspect_lora,
    make_diffusers_lora,
    make_kohya_lora,
)
from services.generator.seamless import set_seamless
from services.generator.tiny_model import TinyModelFiles

PROMPT = "a photo of a cat"
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@dataclass(frozen=True)
class Files:
    a: Path
    b: Path
    c: Path
    unet_only: Path
    peft: Path
    legacy: Path


def _render(pipe: StableDiffusionPipeline, seed: int = 1) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    out = pipe(
        PROMPT, num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    )
    return out.images


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights, peft's `base_layer` wrapping undone and adapter tensors left out."""
    state = model.state_dict()
    return {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}


def _rule(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> str:
    violation = excinfo.value.violations[0]
    assert violation.field == "lora"
    return violation.rule


@pytest.fixture(scope="module")
def pipe(tiny_model_files: TinyModelFiles) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_model_files.diffusers_dir), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def base(pipe: StableDiffusionPipeline) -> np.ndarray:
    return _render(pipe)


@pytest.fixture(scope="module")
def files(pipe: StableDiffusionPipeline, tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Written before any adapter is loaded (the diffusers factory needs a bare pipeline)."""
    root = tmp_path_factory.mktemp("loras")
    return Files(
        a=make_kohya_lora(pipe, root / "a.safetensors", seed=0),
        b=make_kohya_lora(pipe, root / "b.safetensors", seed=1),
        c=make_kohya_lora(pipe, root / "c.safetensors", seed=2, rank=8),
        unet_only=make_kohya_lora(pipe, root / "u.safetensors", seed=3, text_encoder=False),
        peft=make_diffusers_lora(pipe, root / "peft.safetensors", seed=4),
        legacy=make_diffusers_lora(pipe, root / "old.safetensors", seed=5, peft_keys=False),
    )


@pytest.fixture
def adapters(pipe: StableDiffusionPipeline, files: Files) -> Iterator[LoraAdapters]:
    adapters = LoraAdapters(pipe)
    yield adapters
    adapters.clear()


def _req(path: Path, unet: float = 1.0, te: float = 1.0) -> LoraRequest:
    """Keyed by content hash, as the generator keys them (diffusers matches adapter names as
    substrings of parameter names in one warning, so short names like `a` cause noise)."""
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoraRequest(key=key, path=path, unet_weight=unet, te_weight=te)


Render = Callable[..., np.ndarray]


@pytest.fixture
def render_with(pipe: StableDiffusionPipeline, adapters: LoraAdapters) -> Render:
    def _go(*requests: LoraRequest) -> np.ndarray:
        adapters.apply(list(requests))
        return _render(pipe)

    return _go


# --- inspection -------------------------------------------------------------------------------


def test_inspect_kohya_reports_format_rank_and_metadata(files: Files) -> None:
    lora = inspect_lora(files.a)
    assert (lora.format, lora.rank, lora.targets_text_encoder) == ("kohya", 4, True)
    assert lora.metadata["ss_network_module"] == "networks.lora"
    assert lora.metadata["ss_network_dim"] == "4"
    assert lora.metadata["ss_base_model_version"] == "sd_v1"
    assert lora.metadata["ss_output_name"] == "a"
    assert inspect_lora(files.c).rank == 8
    assert not inspect_lora(files.unet_only).targets_text_encoder


def test_inspect_diffusers_formats(files: Files) -> None:
    for path in (files.peft, files.legacy):
        lora = inspect_lora(path)
        assert (lora.format, lora.rank, lora.targets_text_encoder) == ("diffusers", 4, True)


def _raw(path: Path, header: dict[str, object], data: bytes = b"") -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_inspect_refuses_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    lying = _raw(
        tmp_path / "lying.safetensors",
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
    )
    no_tensors = _raw(tmp_path / "none.safetensors", {"__metadata__": {"a": "b"}})
    pickled = tmp_path / "old.safetensors"
    torch.save({"x": torch.zeros(1)}, pickled)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"model.weight": torch.zeros(2, 2)}, str(unknown))
    loha = tmp_path / "loha.safetensors"
    save_file({f"{TO_Q}.hada_w1_a": torch.zeros(2, 2)}, str(loha))
    no_up = tmp_path / "noup.safetensors"
    save_file({f"{TO_Q}.lora_down.weight": torch.zeros(4, 32)}, str(no_up))
    expected = {
        empty: "truncated",
        lying: "truncated",
        no_tensors: "no tensors",
        pickled: "pickled",
        unknown: "unknown LoRA layout",
        loha: "LoHa",
        no_up: "no up matrix",
    }
    for path, words in expected.items():
        with pytest.raises(InvalidArgument) as excinfo:
            inspect_lora(path)
        assert words in _rule(excinfo), path.name
    with pytest.raises(NotFound):
        inspect_lora(tmp_path / "missing.safetensors")


# --- weights ----------------------------------------------------------------------------------


def test_weight_zero_is_base_and_weight_one_differs(
    files: Files, base: np.ndarray, render_with: Render
) -> None:
    assert np.array_equal(render_with(_req(files.a, 0.0, 0.0)), base)
    assert not np.array_equal(render_with(_req(files.a)), base)


def test_each_component_weight_changes_the_image(
    files: Files, base: np.ndarray, render_with: Render
) -> None:
    te_only = render_with(_req(files.a, unet=0.0, te=1.0))
    unet_only = render_with(_req(files.a, unet=1.0, te=0.0))
    both = render_with(_req(files.a))
    assert not np.array_equal(te_only, base)
    assert not np.array_equal(unet_only, base)
    assert not np.array_equal(te_only, unet_only)
    assert not np.array_equal(both, unet_only)


def test_two_loras_at_once_differ_from_each_alone(files: Files, render_with: Render) -> None:
    a = render_with(_req(files.a))
    b = render_with(_req(files.b))
    ab = render_with(_req(files.a), _req(files.b))
    assert not np.array_equal(ab, a)
    assert not np.array_equal(ab, b)
    assert np.array_equal(render_with(_req(files.a)), a)


def test_base_request_after_lora_is_exact_and_base_weights_intact(
    pipe: StableDiffusionPipeline, files: Files, base: np.ndarray, render_with: Render
) -> None:
    before = {part: _base_state(getattr(pipe, part)) for part in ("unet", "text_encoder")}
    before = {part: {k: v.clone() for k, v in state.items()} for part, state in before.items()}
    assert not np.array_equal(render_with(_req(files.a), _req(files.unet_only)), base)
    assert np.array_equal(render_with(), base)
    for part, state in before.items():
        after = _base_state(getattr(pipe, part))
        assert after.keys() == state.keys(), part
        assert all(torch.equal(after[k], v) for k, v in state.items()), part
    assert not np.array_equal(render_with(_req(files.a)), base)  # re-enabled on the next request


def test_switching_never_reloads_base_and_stays_bounded(
    pipe: StableDiffusionPipeline,
    files: Files,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _no_base_load(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the base model was loaded again")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", _no_base_load)
    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", _no_base_load)
    monkeypatch.setattr(checkpoint_loader, "load_pipeline", _no_base_load)
    loads: list[str] = []
    real_load = pipe.load_lora_weights

    def _counting_load(path: str, **kwargs: object) -> None:
        loads.append(Path(path).stem)
        real_load(path, **kwargs)

    monkeypatch.setattr(pipe, "load_lora_weights", _counting_load)
    adapters = LoraAdapters(pipe, max_adapters=2)
    try:
        images = {}
        for path in (files.a, files.b, files.a):
            adapters.apply([_req(path)])
            images.setdefault(path.stem, []).append(_render(pipe))
        assert loads == ["a", "b"]
        assert np.array_equal(*images["a"])
        params = sum(p.numel() for p in pipe.unet.parameters())
        for path in (files.c, files.a, files.b, files.c, files.unet_only, files.a):
            adapters.apply([_req(path)])
            listed = pipe.get_list_adapters()
            assert all(len(names) <= 2 for names in listed.values()), listed
            assert len(adapters.loaded) <= 2
        adapters.apply([_req(files.a), _req(files.b)])
        assert sum(p.numel() for p in pipe.unet.parameters()) == params
    finally:
        adapters.clear()


def test_diffusers_format_loras_load_and_change_the_image(
    files: Files, base: np.ndarray, render_with: Render
) -> None:
    peft = render_with(_req(files.peft))
    legacy = render_with(_req(files.legacy))
    assert not np.array_equal(peft, base)
    assert not np.array_equal(legacy, base)
    assert not np.array_equal(peft, legacy)
    assert np.array_equal(render_with(_req(files.peft, 0.0, 0.0)), base)


# --- wrong architecture and bad requests -------------------------------------------------------


def _sd15_dims(path: Path) -> Path:
    """A kohya LoRA with SD 1.5 widths (320) named like a layer of the tiny model."""
    tensors = {
        f"{TO_Q}.lora_down.weight": torch.zeros(4, 320),
        f"{TO_Q}.lora_up.weight": torch.zeros(320, 4),
        f"{TO_Q}.alpha": torch.tensor(4.0),
    }
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sd_v1"})
    return path


def _sdxl(path: Path) -> Path:
    name = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {
        f"{name}.lora_down.weight": torch.zeros(4, 1280),
        f"{name}.lora_up.weight": torch.zeros(1280, 4),
    }
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


def _too_deep(path: Path) -> Path:
    name = "lora_te_text_model_encoder_layers_11_self_attn_q_proj"
    tensors = {
        f"{name}.lora_down.weight": torch.zeros(4, 32),
        f"{name}.lora_up.weight": torch.zeros(32, 4),
    }
    save_file(tensors, str(path))
    return path


def test_lora_for_another_architecture_is_refused_and_pipeline_untouched(
    pipe: StableDiffusionPipeline,
    files: Files,
    adapters: LoraAdapters,
    tmp_path: Path,
) -> None:
    adapters.apply([_req(files.a)])
    with_a = _render(pipe)
    listed = pipe.get_list_adapters()
    expected = {
        _sd15_dims(
            tmp_path / "sd15.safetensors"
        ): "maps 32→32 features, the file's LoRA maps 320→320",
        _sdxl(tmp_path / "sdxl.safetensors"): "SDXL",
        _too_deep(tmp_path / "deep.safetensors"): "does not exist in this model",
    }
    for path, words in expected.items():
        with pytest.raises(InvalidArgument) as excinfo:
            check_lora_fits(inspect_lora(path), path, pipe)
        assert "made for another model architecture" in _rule(excinfo)
        assert words in _rule(excinfo), _rule(excinfo)
        with pytest.raises(InvalidArgument):
            adapters.apply([_req(files.a), _req(path)])
        assert pipe.get_list_adapters() == listed
        assert np.array_equal(_render(pipe), with_a)


def test_bad_requests_are_refused(pipe: StableDiffusionPipeline, files: Files) -> None:
    adapters = LoraAdapters(pipe, max_adapters=1)
    with pytest.raises(InvalidArgument, match="finite"):
        adapters.apply([_req(files.a, unet=float("nan"))])
    with pytest.raises(InvalidArgument, match="at most 1"):
        adapters.apply([_req(files.a), _req(files.b)])
    with pytest.raises(InvalidArgument, match="adapter key"):
        adapters.apply([LoraRequest("a.b", files.a)])
    with pytest.raises(ValueError):
        LoraAdapters(pipe, max_adapters=0)
    assert adapters.loaded == []


def test_same_lora_twice_sums_its_weights(files: Files, render_with: Render) -> None:
    once = render_with(_req(files.a, 1.0, 1.0))
    assert np.array_equal(render_with(_req(files.a, 0.5, 0.25), _req(files.a, 0.5, 0.75)), once)


def test_a_load_failure_after_the_checks_leaves_lora_disabled(
    pipe: StableDiffusionPipeline,
    files: Files,
    base: np.ndarray,
    adapters: LoraAdapters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapters.apply([_req(files.a)])

    def _broken_load(*_args: object, **_kwargs: object) -> None:
        raise ValueError("diffusers could not convert it")

    monkeypatch.setattr(pipe, "load_lora_weights", _broken_load)
    with pytest.raises(InvalidArgument, match="cannot be loaded"):
        adapters.apply([_req(files.a), _req(files.b)])
    assert adapters.loaded == [_req(files.a).key]
    assert np.array_equal(_render(pipe), base)


def _unet_rows(pipe: StableDiffusionPipeline, rows: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    channels, size = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    sample = torch.randn(rows, channels, size, size, generator=generator)
    width = pipe.text_encoder.config.hidden_size
    embeds = torch.randn(rows, 77, width, generator=generator)
    return sample, embeds


@torch.no_grad()
def test_per_row_gives_each_row_its_own_weighted_loras(
    pipe: StableDiffusionPipeline, adapters: LoraAdapters, files: Files
) -> None:
    """Three jobs' rows in one U-Net pass (one LoRA at 0.8, two LoRAs, none) come out as each
    job's rows do alone with its LoRAs applied the ordinary way."""
    jobs = [(_req(files.a, unet=0.8),), (_req(files.b), _req(files.c, unet=0.5)), ()]
    sample, embeds = _unet_rows(pipe, 2 * len(jobs))
    timestep = torch.tensor(500)
    alone = []
    for i, requests in enumerate(jobs):
        adapters.apply(list(requests))
        rows = slice(2 * i, 2 * i + 2)
        alone.append(pipe.unet(sample[rows], timestep, embeds[rows], return_dict=False)[0])
    adapters.apply([*jobs[0], *jobs[1]])  # every LoRA loaded
    mixes = [adapters.unet_mix(requests) for requests in jobs]
    spans = [(mix, slice(2 * i, 2 * i + 2)) for i, mix in enumerate(mixes)]
    with adapters.per_row(spans):
        together = pipe.unet(sample, timestep, embeds, return_dict=False)[0]
    for i, expected in enumerate(alone):
        torch.testing.assert_close(together[2 * i : 2 * i + 2], expected, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(alone[0], alone[2], atol=1e-3), "the LoRAs changed nothing"
    adapters.apply(list(jobs[0]))  # outside a mixed pass the applied LoRAs hold again
    again = pipe.unet(sample[:2], timestep, embeds[:2], return_dict=False)[0]
    torch.testing.assert_close(again, alone[0], rtol=0, atol=0)
    adapters.apply([])
    base = pipe.unet(sample[4:], timestep, embeds[4:], return_dict=False)[0]
    torch.testing.assert_close(base, alone[2], rtol=0, atol=0)


def _locon_file(pipe: StableDiffusionPipeline, path: Path, rank: int = 4) -> Path:
    """A kohya LoCon: LoRAs on two 3×3 convolutions of the U-Net's ResNet blocks (down 3×3,
    up 1×1), alpha half the rank."""
    generator = torch.Generator().manual_seed(7)
    convs = [
        (name, module)
        for name, module in pipe.unet.named_modules()
        if name.endswith(("resnets.0.conv1", "resnets.0.conv2")) and "base_layer" not in name
    ][:2]
    tensors = {}
    for name, conv in convs:
        key = "lora_unet_" + name.replace(".", "_")
        down = torch.randn(rank, conv.in_channels, 3, 3, generator=generator)
        tensors[key + ".lora_down.weight"] = down / (9 * conv.in_channels) ** 0.5
        tensors[key + ".lora_up.weight"] = torch.randn(conv.out_channels, rank, 1, 1) * 0.5
        tensors[key + ".alpha"] = torch.tensor(rank / 2)
    save_file(tensors, str(path))
    return path


@torch.no_grad()
def test_unet_updates_equal_diffusers_own_lora_layers(
    tiny_model_files: TinyModelFiles, files: Files, tmp_path: Path
) -> None:
    """sdstack adds the U-Net's LoRA updates itself (per batch row); for weighted attention
    LoRAs and a LoCon on convolutions together, its U-Net computes what plain diffusers
    computes with the same files and weights through peft's own layers."""

    def fresh() -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            str(tiny_model_files.diffusers_dir), local_files_only=True
        )

    ours = fresh()
    locon = _locon_file(ours, tmp_path / "locon.safetensors")
    used = [_req(files.a, unet=0.8), _req(files.b, unet=-0.5), _req(locon, unet=1.5)]
    reference = fresh()
    for request in used:
        reference.load_lora_weights(str(request.path), adapter_name=request.key)
    reference.set_adapters(
        [r.key for r in used], adapter_weights=[{"unet": r.unet_weight} for r in used]
    )
    adapters = LoraAdapters(ours)
    adapters.apply(used)
    sample, embeds = _unet_rows(ours, 4)
    timestep = torch.tensor(700)
    expected = reference.unet(sample, timestep, embeds, return_dict=False)[0]
    base = fresh().unet(sample, timestep, embeds, return_dict=False)[0]
    # The same sums in another order: float32 rounding, which the random model amplifies to
    # ~1e-4 here (1e-6 to 5e-4 measured, by thread count and denormal flushing), against a
    # LoRA effect of ~1. The bound is 1% of the effect.
    bound = 0.01 * (expected - base).abs().max()
    assert bound > 1e-3, "the LoRAs changed nothing"
    got = ours.unet(sample, timestep, embeds, return_dict=False)[0]
    assert (got - expected).abs().max() <= bound
    with adapters.per_row([(adapters.unet_mix(used), slice(0, 2)), ((), slice(2, 4))]):
        rows = ours.unet(sample, timestep, embeds, return_dict=False)[0]
    assert (rows[:2] - expected[:2]).abs().max() <= bound
    assert (rows[2:] - base[2:]).abs().max() <= bound


@torch.no_grad()
def test_seamless_tiling_reaches_a_locon_loaded_later(
    tiny_model_files: TinyModelFiles, tmp_path: Path
) -> None:
    """A LoCon's convolutions, loaded after tiling was first set, wrap around too (its down
    convolution pads as its base layer does): with tiling on, shifting the latents shifts the
    U-Net's output across the edges."""
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_model_files.diffusers_dir), local_files_only=True
    )
    set_seamless(pipe.unet, False)  # the U-Net's convolutions listed before the LoCon exists
    adapters = LoraAdapters(pipe)
    locon = _locon_file(pipe, tmp_path / "locon.safetensors")
    adapters.apply([_req(locon, unet=1.5)])
    _, embeds = _unet_rows(pipe, 1)
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    shift = (2 ** (len(pipe.unet.down_blocks) - 1),) * 2  # whole steps of the downsampling
    set_seamless(pipe.unet, True)
    rolled_in = pipe.unet(torch.roll(sample, shift, (2, 3)), 500, embeds, return_dict=False)[0]
    rolled_out = torch.roll(pipe.unet(sample, 500, embeds, return_dict=False)[0], shift, (2, 3))
    assert (rolled_in - rolled_out).abs().max() < 1e-4


@torch.no_grad()
def test_a_compiled_unet_switches_mixes_and_loads_loras_without_compiling_again(
    tiny_model_files: TinyModelFiles, tmp_path: Path
) -> None:
    """With the U-Net compiled in place (as `SDSTACK_COMPILE_UNET` does), the first passes
    compile a graph per kind of pass; after them, switching LoRAs, changing their weights,
    mixing them across the rows of a batch of another size and loading more LoRAs on the same
    layers compile nothing, and every pass computes what the eager U-Net computes."""

    def fresh() -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(tiny_model_files.diffusers_dir), local_files_only=True
        )
        pipe.unet.requires_grad_(False)
        return pipe

    compiled, eager = fresh(), fresh()
    graphs: list[torch.fx.GraphModule] = []

    def count_graphs(graph: torch.fx.GraphModule, _inputs: list) -> Callable[..., object]:
        graphs.append(graph)
        return graph.forward  # the captured graph itself: what dynamo kept, run as captured

    compiled.unet.compile(backend=count_graphs)
    loras = [make_kohya_lora(eager, tmp_path / f"{i}.safetensors", seed=i) for i in range(5)]
    a, b, c, d, e = (_req(path) for path in loras)
    ours, theirs = LoraAdapters(compiled), LoraAdapters(eager)
    sample, embeds = _unet_rows(eager, 2)
    base = eager.unet(sample, 500, embeds, return_dict=False)[0]

    def check(applied: list[LoraRequest], jobs: list[list[LoraRequest]], rows: int) -> None:
        batch, texts = _unet_rows(eager, rows)
        share = rows // len(jobs)
        spans = [(job, slice(i * share, (i + 1) * share)) for i, job in enumerate(jobs)]
        outputs = []
        for pipe, adapters in ((compiled, ours), (eager, theirs)):
            adapters.apply(applied)
            with adapters.per_row([(adapters.unet_mix(job), span) for job, span in spans]):
                outputs.append(pipe.unet(batch, 500, texts, return_dict=False)[0])
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)

    check([], [[]], 2)  # each kind of pass once: no LoRA, one, two over 4 rows, three over 6
    check([a], [[a]], 2)
    check([a, b], [[a], [b]], 4)
    check([a, b, c], [[a, b], [c], []], 6)
    warmed = len(graphs)
    check([b], [[b]], 2)
    check([c, a], [[c], [a]], 4)
    check([replace(a, unet_weight=0.3)], [[replace(a, unet_weight=-0.7)]], 2)
    check([a, b], [[a], [b], [], [a, b]], 8)
    check([d], [[d]], 2)  # loaded now: the banks take its columns
    check([e, a], [[e, a], [e]], 4)
    assert len(graphs) == warmed, "a LoRA switch, mix or load compiled the U-Net again"
    with ours.per_row([(ours.unet_mix([a]), slice(0, 2))]):
        changed = compiled.unet(sample, 500, embeds, return_dict=False)[0]
    assert (changed - base).abs().max() > 1e-3, "the LoRAs changed nothing"
