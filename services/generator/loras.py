"""LoRA files (kohya/A1111 and diffusers layouts): inspection, fit checks and peft adapters.

A LoRA file is checked from its safetensors header alone: its layout, rank and metadata
(`inspect_lora`), then every layer's down/up shapes against the pipeline it is meant for
(`check_lora_fits`), so a file made for another architecture is refused before diffusers
touches the pipeline. `LoraAdapters` keeps the LoRAs of one pipeline loaded as named peft
adapters and switches between them per request without reloading the base model; the U-Net's
updates are added per batch row (`lora_rows`), so jobs with different LoRAs share passes.

Test factories (`make_kohya_lora`, `make_diffusers_lora`) write small LoRAs for a given
pipeline; the test suite and the benchmarks share them.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from diffusers.loaders.lora_base import (
    disable_lora_for_text_encoder,
    enable_lora_for_text_encoder,
    set_adapters_for_text_encoder,
)
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from services.common.errors import InvalidArgument, NotFound
from services.common.sd.checkpoint_loader import read_safetensors_header
from services.generator.lora_rows import RowMixes, UnetLoraRows, UnetMix

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

FIELD = "lora"
LoraFormat = Literal["kohya", "diffusers"]
Shape = tuple[int, ...]

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
KOHYA_PREFIXES = {
    "lora_unet_": UNET,
    "lora_te_": TEXT_ENCODER,
    "lora_te1_": TEXT_ENCODER,
    "lora_te2_": TEXT_ENCODER_2,
}
KOHYA_DOWN, KOHYA_UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
DIFFUSERS_PREFIXES = {
    "unet.": UNET,
    "text_encoder.": TEXT_ENCODER,
    "text_encoder_2.": TEXT_ENCODER_2,
}
# Diffusers spellings of the down/up matrices: peft, diffusers, newer diffusers, attn-processor.
DIFFUSERS_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
DIFFUSERS_UP = (".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")
PROCESSOR_DOWN, PROCESSOR_UP = "_lora.down.weight", "_lora.up.weight"
PROCESSOR_NAMES = {
    UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    TEXT_ENCODER: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
UNSUPPORTED_HINTS = {
    "hada_": "LyCORIS LoHa",
    "lokr_": "LyCORIS LoKr",
    ".dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
}
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
TEXT_MODEL = "text_model."
UNET_TARGETS = re.compile(r".*transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)")
TEXT_TARGETS = re.compile(r".*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)")
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_LOADED_LORAS = 8


def _invalid(rule: str) -> InvalidArgument:
    return InvalidArgument(FIELD, rule)


@dataclass(frozen=True)
class LoraLayer:
    """One layer a LoRA file adapts: `name` is the module path as the file spells it
    (underscored for kohya, dotted for diffusers) within `component`."""

    component: str
    name: str
    down: Shape
    up: Shape


@dataclass(frozen=True)
class LoraFile:
    format: LoraFormat
    metadata: dict[str, str]
    targets_text_encoder: bool
    rank: int
    layers: tuple[LoraLayer, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA for one generation. `key` names the adapter (a content hash: no dots)."""

    key: str
    path: Path
    unet_weight: float = 1.0
    te_weight: float = 1.0


# --- inspection ------------------------------------------------------------------------------


def inspect_lora(path: Path) -> LoraFile:
    """Layout, rank, metadata and layers of a `.safetensors` LoRA, from its header only."""
    if not path.is_file():
        raise NotFound("lora", path.name)
    shapes, metadata = _read_header(path)
    if not shapes:
        raise _invalid(f"{path.name} holds no tensors")
    fmt = _layout(shapes)
    layers = _kohya_layers(shapes) if fmt == "kohya" else _diffusers_layers(shapes)
    if not layers:
        raise _invalid(f"{path.name} holds no LoRA layers (no down/up matrices)")
    return LoraFile(
        format=fmt,
        metadata=metadata,
        targets_text_encoder=any(layer.component != UNET for layer in layers),
        rank=max(layer.down[0] for layer in layers),
        layers=tuple(layers),
    )


def _read_header(path: Path) -> tuple[dict[str, Shape], dict[str, str]]:
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(PICKLE_MAGIC):
        raise _invalid(
            f"{path.name} is a pickled PyTorch file: LoRAs are loaded from .safetensors only"
        )
    try:
        return read_safetensors_header(path)
    except InvalidArgument as exc:
        raise _invalid(exc.violations[0].rule) from exc


def _layout(shapes: Mapping[str, Shape]) -> LoraFormat:
    names = list(shapes)
    for marker, hint in UNSUPPORTED_HINTS.items():
        if any(marker in name for name in names):
            raise _invalid(f"unsupported LoRA type: {hint} (only plain LoRA layers are loaded)")
    if all(name.startswith(tuple(KOHYA_PREFIXES)) for name in names):
        return "kohya"
    if all(name.startswith(tuple(DIFFUSERS_PREFIXES)) for name in names):
        return "diffusers"
    known = (*KOHYA_PREFIXES, *DIFFUSERS_PREFIXES)
    odd = next((n for n in names if not n.startswith(known)), None)
    if odd is None:
        raise _invalid("unknown LoRA layout: it mixes kohya and diffusers tensor names")
    raise _invalid(
        f"unknown LoRA layout: tensor {odd!r} is neither kohya (`lora_unet_…`, `lora_te_…`) "
        "nor diffusers (`unet.…`, `text_encoder.…`)"
    )


def _split_prefix(name: str, prefixes: Mapping[str, str]) -> tuple[str, str]:
    for prefix, component in sorted(prefixes.items(), key=lambda item: -len(item[0])):
        if name.startswith(prefix):
            return component, name[len(prefix) :]
    raise _invalid(f"tensor {name!r} has no known component prefix")


def _kohya_layers(shapes: Mapping[str, Shape]) -> list[LoraLayer]:
    pairs: dict[str, dict[str, Shape]] = {}
    for name, shape in shapes.items():
        module, part = _kohya_part(name)
        pairs.setdefault(module, {})[part] = shape
    layers = []
    for module, parts in pairs.items():
        component, local = _split_prefix(module, KOHYA_PREFIXES)
        layers.append(_layer(component, local, parts, module))
    return [layer for layer in layers if layer is not None]


def _kohya_part(name: str) -> tuple[str, str]:
    for suffix, part in ((KOHYA_DOWN, "down"), (KOHYA_UP, "up"), (ALPHA, "alpha")):
        if name.endswith(suffix) and "." not in name[: -len(suffix)]:
            return name[: -len(suffix)], part
    raise _invalid(
        f"unknown kohya LoRA tensor {name!r}: expected .lora_down.weight, .lora_up.weight or .alpha"
    )


def _diffusers_layers(shapes: Mapping[str, Shape]) -> list[LoraLayer]:
    pairs: dict[tuple[str, str], dict[str, Shape]] = {}
    for name, shape in shapes.items():
        component, rest = _split_prefix(name, DIFFUSERS_PREFIXES)
        module, part = _diffusers_part(component, rest, name)
        pairs.setdefault((component, module), {})[part] = shape
    layers = [_layer(comp, module, parts, module) for (comp, module), parts in pairs.items()]
    return [layer for layer in layers if layer is not None]


def _diffusers_part(component: str, rest: str, name: str) -> tuple[str, str]:
    if rest.endswith(ALPHA):
        return rest[: -len(ALPHA)], "alpha"
    for suffixes, part in ((DIFFUSERS_DOWN, "down"), (DIFFUSERS_UP, "up")):
        for suffix in suffixes:
            if rest.endswith(suffix):
                return rest[: -len(suffix)], part
    for suffix, part in ((PROCESSOR_DOWN, "down"), (PROCESSOR_UP, "up")):
        if rest.endswith(suffix):
            return _processor_module(component, rest[: -len(suffix)]), part
    raise _invalid(
        f"unknown diffusers LoRA tensor {name!r}: expected lora_A/lora_B or lora.down/up"
    )


def _processor_module(component: str, path: str) -> str:
    """`…attn1.processor.to_q` (the old attention-processor spelling) → `…attn1.to_q`."""
    head, _, leaf = path.rpartition(".")
    head = head.removesuffix(".processor")
    renamed = PROCESSOR_NAMES.get(component, PROCESSOR_NAMES[UNET]).get(leaf, leaf)
    return f"{head}.{renamed}"


def _layer(component: str, name: str, parts: Mapping[str, Shape], shown: str) -> LoraLayer | None:
    """The layer `parts` describe; None for a lone `alpha` (it adapts nothing)."""
    down, up = parts.get("down"), parts.get("up")
    if down is None and up is None:
        return None
    if down is None or up is None:
        raise _invalid(f"layer {shown} has no {'down' if down is None else 'up'} matrix")
    if len(down) not in (2, 4) or len(up) not in (2, 4) or down[0] != up[1] or down[0] == 0:
        raise _invalid(f"layer {shown} has inconsistent shapes: down {down}, up {up}")
    alpha = parts.get("alpha")
    if alpha is not None and math.prod(alpha) != 1:
        raise _invalid(f"layer {shown} has a non-scalar alpha of shape {alpha}")
    return LoraLayer(component, name, down, up)


# --- fit check -------------------------------------------------------------------------------


def check_lora_fits(lora: LoraFile, path: Path, pipe: StableDiffusionPipeline) -> None:
    """Raise InvalidArgument unless every layer of `lora` names a layer of `pipe` of the
    same kind and in/out size. Reads nothing but the modules' attributes."""
    indexes: dict[str, dict[str, nn.Module]] = {}
    for layer in lora.layers:
        if layer.component not in indexes:
            index = _module_index(pipe, layer.component, lora.format)
            if index is None:
                sdxl = " (an SDXL LoRA)" if layer.component == TEXT_ENCODER_2 else ""
                problem = f"it has {layer.component} weights and this model has none{sdxl}"
                raise _wrong_architecture(path, lora, problem)
            indexes[layer.component] = index
        problem = _layer_problem(layer, indexes[layer.component].get(layer.name))
        if problem:
            raise _wrong_architecture(path, lora, problem)


def _wrong_architecture(path: Path, lora: LoraFile, problem: str) -> InvalidArgument:
    base = lora.metadata.get("ss_base_model_version")
    said = f" (its metadata says base model {base!r})" if base else ""
    return _invalid(f"made for another model architecture: {path.name}: {problem}{said}")


def _module_index(
    pipe: StableDiffusionPipeline, component: str, fmt: LoraFormat
) -> dict[str, nn.Module] | None:
    """Modules of one pipeline component, keyed the way `fmt` files name them; None when
    the pipeline has no such component. Text-encoder names match with and without
    `text_model.` (transformers 5 dropped it; files keep it)."""
    model = getattr(pipe, component, None) if component in (UNET, TEXT_ENCODER) else None
    if model is None:
        return None
    index = {}
    for name, module in model.named_modules():
        names = [name]
        if component == TEXT_ENCODER:
            names = [TEXT_MODEL + name.removeprefix(TEXT_MODEL), name.removeprefix(TEXT_MODEL)]
        for spelled in names:
            index[spelled.replace(".", "_") if fmt == "kohya" else spelled] = module
    return index


def _layer_problem(layer: LoraLayer, module: nn.Module | None) -> str | None:
    where = f"{layer.component} layer {layer.name}"
    if module is None:
        return f"{where} does not exist in this model"
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Linear):
        ndim, size, kernel = 2, (base.in_features, base.out_features), ()
    elif isinstance(base, nn.Conv2d):
        ndim, size, kernel = 4, (base.in_channels, base.out_channels), tuple(base.kernel_size)
    else:
        return f"{where} is a {type(base).__name__}, not a linear or convolution layer"
    found = (layer.down[1], layer.up[0])
    if len(layer.down) != ndim or len(layer.up) != ndim:
        return f"{where} is a {type(base).__name__} but the file's matrices are {layer.down}"
    if found != size or layer.down[2:] != kernel or layer.up[2:] not in ((), (1, 1)):
        return (
            f"{where} maps {size[0]}→{size[1]} features, "
            f"the file's LoRA maps {found[0]}→{found[1]} (down {layer.down}, up {layer.up})"
        )
    return None


# --- adapters --------------------------------------------------------------------------------


@contextmanager
def _quiet_adapters() -> Iterator[None]:
    """Silence misleading messages while adapters are injected or deleted: transformers'
    LOAD REPORT (it lists the untouched base text-encoder weights as MISSING), and peft's
    warnings that a model already holds adapters (holding several is the point) and that
    a deleted adapter was active (the next `set_adapters` chooses the active ones)."""
    report_logger = logging.getLogger("transformers.integrations.peft")
    level = report_logger.level
    report_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            yield
    finally:
        report_logger.setLevel(level)


class LoraAdapters:
    """The LoRAs loaded into one pipeline as named peft adapters, least recently used evicted.

    The text encoder runs peft's own LoRA layers, switched with `set_adapters`. The U-Net's
    LoRA layers are disabled and sdstack adds their updates per batch row (`lora_rows`): the
    applied LoRAs for every row, or each job's own inside `per_row`. Not thread-safe: one
    thread at a time calls it (the generator's jobs take turns). With no LoRA requested every
    adapted layer computes exactly its base layer: the base image comes back bit for bit.
    """

    def __init__(self, pipe: StableDiffusionPipeline, max_adapters: int = MAX_LOADED_LORAS) -> None:
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self._pipe = pipe
        self._max = max_adapters
        self._loaded: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._unet = UnetLoraRows()
        self._active: tuple[LoraRequest, ...] | None = ()
        """What the pipeline computes now; None when unknown (after a failure)."""
        self._text_enabled: bool | None = None
        """Whether the text encoder's adapted layers are enabled; None when unknown. Walking
        the layers to enable them again costs as much as re-weighting them, so it is skipped."""

    @property
    def pipe(self) -> StableDiffusionPipeline:
        """The pipeline these adapters live in."""
        return self._pipe

    @property
    def loaded(self) -> list[str]:
        """Adapter keys in the pipeline, least recently used first."""
        return list(self._loaded)

    def apply(self, requests: Sequence[LoraRequest]) -> None:
        """Make exactly `requests` active with their weights, loading and evicting as needed.

        Every new file is checked before anything changes, so a bad one leaves the
        pipeline as it was. Should diffusers still fail to load a checked file, the
        adapters are left disabled (base output) until the next `apply`.
        """
        wanted = _merge(requests)
        if len(wanted) > self._max:
            raise _invalid(f"at most {self._max} different LoRAs per request, got {len(wanted)}")
        for key in wanted:
            if key in self._loaded:
                self._loaded.move_to_end(key)
        state = tuple(wanted.values())
        if state == self._active:
            return
        new = [request for key, request in wanted.items() if key not in self._loaded]
        for request in new:
            check_lora_fits(inspect_lora(request.path), request.path, self._pipe)
        self._evict(keep=set(wanted), room=len(new))
        self._active = None
        try:
            for request in new:
                self._load(request)
        except InvalidArgument:
            self._unet.set_default(())
            self._enable_text(False)
            raise
        finally:
            if new:
                self._unet.attach(self._pipe.unet)
                self._text_enabled = None  # new layers start enabled, the others keep their state
        for key in wanted:
            self._loaded.move_to_end(key)
        self._unet.set_default(self.unet_mix(requests))
        self._activate_text(list(wanted.values()))
        self._active = state

    def unet_mix(self, requests: Sequence[LoraRequest]) -> UnetMix:
        """The U-Net part of `requests` once applied: adapters with U-Net layers, weighted."""
        return tuple(
            (key, request.unet_weight)
            for key, request in _merge(requests).items()
            if UNET in self._loaded.get(key, ())
        )

    def per_row(self, rows: RowMixes) -> AbstractContextManager[None]:
        """U-Net calls inside apply to each range of batch rows its own weighted LoRAs, so
        the rows of several jobs share one pass. Each job's LoRAs must already be loaded
        (`apply`)."""
        return self._unet.per_row(rows)

    def clear(self) -> None:
        """Delete every adapter this object loaded; the pipeline computes its base output."""
        if self._loaded:
            with _quiet_adapters():
                self._pipe.delete_adapters(list(self._loaded))
            self._loaded.clear()
        self._unet.detach()
        self._active = None

    def _evict(self, keep: set[str], room: int) -> None:
        victims = [key for key in self._loaded if key not in keep]
        excess = len(self._loaded) + room - self._max
        if excess > 0:
            with _quiet_adapters():
                self._pipe.delete_adapters(victims[:excess])
            for key in victims[:excess]:
                del self._loaded[key]

    def _load(self, request: LoraRequest) -> None:
        try:
            with _quiet_adapters():
                self._pipe.load_lora_weights(
                    str(request.path),
                    adapter_name=request.key,
                    use_safetensors=True,
                    local_files_only=True,
                )
        except (ValueError, KeyError, RuntimeError, OSError, SafetensorError) as exc:
            self._forget(request.key)
            raise _invalid(f"{request.path.name} cannot be loaded: {exc}") from exc
        parts = self._components(request.key)
        if not parts:
            raise _invalid(f"{request.path.name} adapted no layer of this model")
        self._loaded[request.key] = parts

    def _components(self, key: str) -> frozenset[str]:
        listed = self._pipe.get_list_adapters()
        return frozenset(part for part, names in listed.items() if key in names)

    def _forget(self, key: str) -> None:
        """Remove whatever a failed load injected."""
        if self._components(key):
            self._pipe.delete_adapters([key])

    def _activate_text(self, wanted: list[LoraRequest]) -> None:
        text = [request for request in wanted if TEXT_ENCODER in self._loaded[request.key]]
        if not text:
            if any(TEXT_ENCODER in parts for parts in self._loaded.values()):
                self._enable_text(False)
            return
        self._enable_text(True)
        set_adapters_for_text_encoder(
            [r.key for r in text], self._pipe.text_encoder, [r.te_weight for r in text]
        )

    def _enable_text(self, enabled: bool) -> None:
        if self._text_enabled is not enabled:
            if enabled:
                enable_lora_for_text_encoder(self._pipe.text_encoder)
            else:
                disable_lora_for_text_encoder(self._pipe.text_encoder)
        self._text_enabled = enabled


@dataclass(frozen=True)
class LoraPlan:
    """One job's LoRAs on its pipeline: what the generator's step batching needs to run the
    job's U-Net passes alone (`activate`) or mixed with other jobs' rows (`unet_mix`)."""

    adapters: LoraAdapters
    requests: tuple[LoraRequest, ...]

    def activate(self) -> None:
        self.adapters.apply(self.requests)

    @property
    def unet_mix(self) -> UnetMix:
        return self.adapters.unet_mix(self.requests)


def _merge(requests: Sequence[LoraRequest]) -> dict[str, LoraRequest]:
    """One request per key; a LoRA named twice applies its weights summed, as two
    applications of the same linear update would."""
    merged: dict[str, LoraRequest] = {}
    for request in requests:
        _check_request(request)
        if (seen := merged.get(request.key)) is not None:
            request = LoraRequest(
                request.key,
                seen.path,
                seen.unet_weight + request.unet_weight,
                seen.te_weight + request.te_weight,
            )
        merged[request.key] = request
    return merged


def _check_request(request: LoraRequest) -> None:
    if not ADAPTER_NAME.fullmatch(request.key):
        raise _invalid(f"bad adapter key {request.key!r}: use letters, digits, _ and -")
    for weight in (request.unet_weight, request.te_weight):
        if not math.isfinite(weight):
            raise _invalid(f"weight of {request.path.name} must be a finite number, got {weight}")


# --- test factories --------------------------------------------------------------------------


def _targets(model: nn.Module, pattern: re.Pattern[str]) -> list[tuple[str, nn.Linear]]:
    """Linear layers whose names match `pattern`, unwrapped from any peft adapter layer."""
    found = []
    for name, module in model.named_modules():
        if pattern.fullmatch(name):
            found.append((name, getattr(module, "base_layer", module)))
    return found


def _kohya_name(component: str, name: str) -> str:
    if component == UNET:
        return "lora_unet_" + name.replace(".", "_")
    return "lora_te_" + (TEXT_MODEL + name.removeprefix(TEXT_MODEL)).replace(".", "_")


def make_kohya_lora(
    pipe: StableDiffusionPipeline,
    path: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    text_encoder: bool = True,
    scale: float = 0.5,
) -> Path:
    """Write a kohya-format LoRA for `pipe`'s attention projections (seeded, non-zero up
    matrices, so it changes the image), with kohya's `ss_*` metadata."""
    generator = torch.Generator().manual_seed(seed)
    parts = [(UNET, _targets(pipe.unet, UNET_TARGETS))]
    if text_encoder:
        parts.append((TEXT_ENCODER, _targets(pipe.text_encoder, TEXT_TARGETS)))
    tensors = {}
    for component, targets in parts:
        for name, linear in targets:
            key = _kohya_name(component, name)
            down = torch.randn(rank, linear.in_features, generator=generator)
            tensors[key + KOHYA_DOWN] = down / math.sqrt(linear.in_features)
            up = torch.randn(linear.out_features, rank, generator=generator)
            tensors[key + KOHYA_UP] = up * scale
            tensors[key + ALPHA] = torch.tensor(float(rank))
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": path.stem,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _peft_lora_state(
    model: nn.Module, targets: list[str], rank: int, generator: torch.Generator, scale: float
) -> dict[str, torch.Tensor]:
    """Add a peft LoRA to a copy of `model`, fill it with seeded values, return its state."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if getattr(model, "peft_config", None):
        raise ValueError("make_diffusers_lora needs a pipeline with no LoRA loaded")
    clone = copy.deepcopy(model)
    clone.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))  # type: ignore[operator]
    with torch.no_grad():
        for name, param in clone.named_parameters():
            if ".lora_A." in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    state = get_peft_model_state_dict(clone)
    return {
        key: tensor.detach().to("cpu", torch.float32).contiguous() for key, tensor in state.items()
    }


def make_diffusers_lora(
    pipe: StableDiffusionPipeline,
    path: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    text_encoder: bool = True,
    scale: float = 0.5,
    peft_keys: bool = True,
) -> Path:
    """Write a diffusers-format LoRA with `save_lora_weights`, made with peft on copies of
    `pipe`'s U-Net and text encoder (so meant for small models). `peft_keys=False` writes the
    older `lora.down`/`lora.up` spelling instead of peft's `lora_A`/`lora_B`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    generator = torch.Generator().manual_seed(seed)
    unet = _peft_lora_state(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"], rank, generator, scale)
    text = None
    if text_encoder:
        projections = ["q_proj", "k_proj", "v_proj", "out_proj"]
        text = _peft_lora_state(pipe.text_encoder, projections, rank, generator, scale)
    if not peft_keys:
        unet = convert_state_dict_to_diffusers(unet)
        text = convert_state_dict_to_diffusers(text) if text else None
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent),
        unet_lora_layers=unet,
        text_encoder_lora_layers=text,
        weight_name=path.name,
    )
    return path
