"""The U-Net's LoRA updates, computed per batch row, in a form `torch.compile` keeps.

peft's LoRA layers stay in the U-Net and hold every loaded adapter's matrices, but they are
disabled: each adapted layer computes its base output, and a forward hook adds the LoRA
updates from the layer's bank. A bank lays the loaded adapters side by side: their down
matrices stacked (`down`: [columns, in, …]) and their up matrices, scaled by alpha / rank,
likewise (`up`: [out, columns, …]). Each adapter owns the same range of columns in every
layer, as wide as its largest rank (zero where a layer's rank is smaller or the adapter leaves
the layer alone).

A pass reads the columns of the adapters its rows use (`_Plan.columns`) and weighs each
column per row (`_Plan.weights`: the row's weight for the column's adapter, 0 where the row's
job does not use it). So:

- a pass costs two products per layer, whether its rows share one LoRA mix or every job brings
  its own: batched LoRA serving in dense form, as S-LoRA and Punica serve many adapters in one
  batch, instead of a product per job and adapter (peft's mixed-batch inference);
- a row with no LoRA gets exactly its base output (its weights are 0: the updates add exact
  zeros), and a job's rows get the same updates alone as in a batch, up to the rounding of
  sums over more columns;
- switching or mixing LoRAs changes the two small tensors a pass reads, never the layers.
  A compiled U-Net (`torch.compile`) therefore runs every mix with a graph it has already
  compiled: the graphs depend on the banks' width and on the number of columns a pass reads,
  both rounded up to a power of two, never on which adapters or weights. Only a load that
  widens the banks or adapts layers no earlier LoRA adapted compiles again: diffusers'
  `enable_lora_hotswap` does the same for one adapter at a time, by padding ranks.

Every loaded layer is a plain LoRA (down, up, alpha): the DoRA and LyCORIS files peft would
compute differently are refused when their header is read (`loras.inspect_lora`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

UnetMix = tuple[tuple[str, float], ...]
"""The LoRAs one job applies to the U-Net: (adapter key, weight), in the job's order."""

RowMixes = Sequence[tuple[UnetMix, slice]]
"""Each range of a pass's batch rows with its job's U-Net LoRAs."""

MIN_COLUMNS = 8
"""The fewest columns a bank holds or a pass reads: the first power-of-two bucket."""


def columns_bucket(count: int) -> int:
    """`count` rounded up to a power of two (at least MIN_COLUMNS): the few widths a compiled
    U-Net meets, so it compiles a graph per width once."""
    return max(MIN_COLUMNS, 1 << max(count - 1, 0).bit_length())


@dataclass(frozen=True)
class _Plan:
    """The LoRAs of one pass: the bank columns it reads (padded with column 0 at weight 0 up
    to a bucket) and each row's weight for each (one row per batch row, or a single row for
    every row)."""

    columns: torch.Tensor  # [width], int64, on the banks' device
    weights: torch.Tensor  # [rows or 1, width], the banks' dtype and device

    @property
    def rows(self) -> int:
        return self.weights.shape[0]


class _Bank:
    """One adapted layer's loaded adapters, side by side, and the forward hook adding their
    updates. `down` is None while the layer holds no adapter."""

    def __init__(self, owner: UnetLoraRows, base: nn.Module) -> None:
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise ValueError(f"LoRA on a {type(base).__name__}: only Linear and Conv2d layers")
        self.owner = owner
        self.base = base
        self.down: torch.Tensor | None = None
        self.up: torch.Tensor | None = None

    def fill(self, layer: LoraLayer, columns: dict[str, range], width: int) -> None:
        """Copy `layer`'s adapters into banks `width` columns wide, each at its columns."""
        keys = list(layer.lora_A)
        if not keys:
            self.down = self.up = None
            return
        like, base_weight = layer.lora_A[keys[0]].weight, self.base.weight
        down = torch.zeros(width, *base_weight.shape[1:], dtype=like.dtype, device=like.device)
        up_shape = (base_weight.shape[0], width, *[1] * (base_weight.dim() - 2))
        up = torch.zeros(up_shape, dtype=like.dtype, device=like.device)
        for key in keys:
            if layer.lora_B[key].bias is not None:
                raise ValueError(f"adapter {key} has a bias on its up matrix; plain LoRA has none")
            rank = layer.r[key]
            place = slice(columns[key].start, columns[key].start + rank)
            down[place] = layer.lora_A[key].weight.detach()
            scaled = layer.lora_B[key].weight.detach().float() * base_scale(layer, key)
            up[:, place] = scaled.to(like.dtype)
        self.down, self.up = down, up

    def __call__(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        plan = self.owner.plan
        if plan is None or self.down is None or self.up is None:
            return output
        x = args[0]
        if plan.rows != 1 and x.shape[0] != plan.rows:
            raise RuntimeError(f"LoRAs planned for {plan.rows} rows, the batch has {x.shape[0]}")
        down = self.down.index_select(0, plan.columns)
        up = self.up.index_select(1, plan.columns)
        if isinstance(self.base, nn.Conv2d):
            # the base layer's padding mode too: seamless tiling sets it per job
            hidden = self.base._conv_forward(x.to(down.dtype), down, None)
            weights = plan.weights.view(plan.rows, -1, 1, 1)
            return output + F.conv2d(hidden * weights, up)
        hidden = F.linear(x.to(down.dtype), down)
        weights = plan.weights.view(plan.rows, *[1] * (hidden.dim() - 2), -1)
        return output + F.linear(hidden * weights, up)


class UnetLoraRows:
    """Adds the U-Net's LoRA updates per row: the mix of `set_default` to every row, or inside
    `per_row` each range of rows its own. Holds no reference to the model beyond its hooks."""

    def __init__(self) -> None:
        self._banks: weakref.WeakKeyDictionary[nn.Module, _Bank] = weakref.WeakKeyDictionary()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._columns: dict[str, range] = {}
        self._banks_place: tuple[torch.device, torch.dtype] | None = None
        """The banks' device and dtype; None while no layer holds an adapter."""
        self._default_mix: UnetMix = ()
        self._default: _Plan | None = None
        self._pass: _Plan | None = None
        self._in_pass = False

    @property
    def plan(self) -> _Plan | None:
        """The LoRAs of the U-Net call running now."""
        return self._pass if self._in_pass else self._default

    def attach(self, unet: nn.Module) -> None:
        """Lay out the adapters `unet`'s LoRA layers hold now in the banks, hooking the layers
        not hooked yet and disabling peft's own updates. Call after adapters are loaded or
        deleted."""
        layers = [layer for layer in unet.modules() if isinstance(layer, LoraLayer)]
        self._columns = _allocate(layers)
        width = columns_bucket(sum(len(columns) for columns in self._columns.values()))
        self._banks_place = None
        for layer in layers:
            layer.enable_adapters(False)
            bank = self._banks.get(layer)
            if bank is None:
                bank = self._banks[layer] = _Bank(self, layer.get_base_layer())
                self._handles.append(layer.register_forward_hook(bank))
            bank.fill(layer, self._columns, width)
            if bank.down is not None:
                self._banks_place = bank.down.device, bank.down.dtype
        self.set_default(tuple((key, w) for key, w in self._default_mix if key in self._columns))

    def detach(self) -> None:
        """Removes every hook: the layers compute their base output."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._banks.clear()
        self._columns, self._banks_place = {}, None
        self._default_mix, self._default = (), None

    def set_default(self, mix: UnetMix) -> None:
        """The mix every row gets outside `per_row`."""
        self._default_mix = mix
        self._default = self._plan_of([(mix, slice(None))])

    @contextmanager
    def per_row(self, spans: RowMixes) -> Iterator[None]:
        """U-Net calls inside apply to each range of rows its own mix."""
        outer = self._pass, self._in_pass
        self._pass, self._in_pass = self._plan_of(spans), True
        try:
            yield
        finally:
            self._pass, self._in_pass = outer

    def _plan_of(self, spans: RowMixes) -> _Plan | None:
        keys = sorted({key for mix, _ in spans for key, _ in mix})
        if not keys:
            return None
        missing = [key for key in keys if key not in self._columns]
        if missing or self._banks_place is None:
            raise RuntimeError(f"LoRA adapters {missing} are not loaded in the U-Net")
        read = [column for key in keys for column in self._columns[key]]
        width = columns_bucket(len(read))
        at, start = {}, 0
        for key in keys:
            at[key] = slice(start, start + len(self._columns[key]))
            start = at[key].stop
        rows = max(span.stop for _, span in spans) if spans[0][1].stop is not None else 1
        weights = torch.zeros(rows, width)
        for mix, span in spans:
            for key, weight in mix:
                weights[span, at[key]] += weight
        columns = torch.tensor(read + [0] * (width - len(read)))
        device, dtype = self._banks_place
        return _Plan(columns.to(device), weights.to(device, dtype))


def _allocate(layers: Sequence[LoraLayer]) -> dict[str, range]:
    """Each adapter's columns, the same in every layer: as many as its largest rank, in the
    order of the adapters' keys."""
    ranks: dict[str, int] = {}
    for layer in layers:
        for key in layer.lora_A:
            ranks[key] = max(ranks.get(key, 0), layer.r[key])
    columns, start = {}, 0
    for key in sorted(ranks):
        columns[key] = range(start, start + ranks[key])
        start += ranks[key]
    return columns


def base_scale(layer: LoraLayer, key: str) -> float:
    """The adapter's scale at weight 1, as peft's `set_scale` computes it."""
    rank = layer.r[key] ** 0.5 if layer.use_rslora.get(key, False) else layer.r[key]
    return layer.lora_alpha[key] / rank
