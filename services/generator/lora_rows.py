"""The U-Net's LoRA updates, computed per batch row.

peft's LoRA layers stay in the U-Net and hold every loaded adapter's matrices, but they are
disabled: each adapted layer computes its base output, and a forward hook adds the LoRA
updates. For each adapter a pass uses, the hook runs the adapter's down and up products once
over all the pass's rows, with each row's input to the up product scaled by that row's weight
for the adapter (0 where the row's job does not use it): batched LoRA serving in dense form,
as S-LoRA and Punica serve many adapters in one batch. So:

- a pass costs a few products per adapter whether its rows share one LoRA mix or every job
  brings its own, instead of a product per job and adapter (peft's mixed-batch inference);
- a job's rows compute the same products alone as in a batch, and its updates are added in
  one order (adapters sorted by key) whichever adapters its neighbours use: the adapters a
  row does not use add exact zeros, so a row with no LoRA gets exactly its base output;
- switching LoRAs between requests changes a value held here instead of walking the model's
  layers to re-weight them (`set_adapters`).

Every loaded layer is a plain LoRA (down, up, alpha): the DoRA and LyCORIS files peft would
compute differently are refused when their header is read (`loras.inspect_lora`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.utils.hooks import RemovableHandle

UnetMix = tuple[tuple[str, float], ...]
"""The LoRAs one job applies to the U-Net: (adapter key, weight), in the job's order."""

RowMixes = Sequence[tuple[UnetMix, slice]]
"""Each range of a pass's batch rows with its job's U-Net LoRAs."""


@dataclass(frozen=True)
class _Plan:
    """The LoRAs of one pass: every adapter it uses (`keys`, sorted) and each row's weight
    for each (`weights`: one row per batch row, or a single row for every row)."""

    keys: tuple[str, ...]
    weights: torch.Tensor  # [rows or 1, len(keys)], float32, on the CPU
    _scales: dict[tuple, torch.Tensor] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, spans: RowMixes) -> _Plan | None:
        keys = tuple(sorted({key for mix, _ in spans for key, _ in mix}))
        if not keys:
            return None
        column = {key: i for i, key in enumerate(keys)}
        rows = max(span.stop for _, span in spans) if spans[0][1].stop is not None else 1
        weights = torch.zeros(rows, len(keys))
        for mix, span in spans:
            for key, weight in mix:
                weights[span, column[key]] += weight
        return cls(keys, weights)

    @property
    def rows(self) -> int:
        return self.weights.shape[0]

    def row_scales(self, index: int, scale: float, like: torch.Tensor) -> torch.Tensor:
        """Each row's factor for adapter `index` at base scale `scale`, shaped to scale a
        hidden tensor like `like` row by row (the same for every layer of equal scale)."""
        found = (index, scale, like.dtype, like.device, like.dim())
        if found not in self._scales:
            factors = (self.weights[:, index] * scale).to(like.device, like.dtype)
            self._scales[found] = factors.view(self.rows, *[1] * (like.dim() - 1))
        return self._scales[found]


class UnetLoraRows:
    """Adds the U-Net's LoRA updates per row: the mix of `set_default` to every row, or inside
    `per_row` each range of rows its own. Holds no reference to the model beyond its hooks."""

    def __init__(self) -> None:
        self._default: _Plan | None = None
        self._pass: _Plan | None = None
        self._in_pass = False
        self._hooks: weakref.WeakKeyDictionary[nn.Module, RemovableHandle] = (
            weakref.WeakKeyDictionary()
        )

    def attach(self, unet: nn.Module) -> None:
        """Hooks every LoRA layer of `unet` not hooked yet and disables peft's own updates
        (new layers start enabled). Call after each adapter load."""
        for layer in unet.modules():
            if isinstance(layer, LoraLayer):
                layer.enable_adapters(False)
                if layer not in self._hooks:
                    self._hooks[layer] = layer.register_forward_hook(self._add_updates)

    def detach(self) -> None:
        """Removes every hook: the layers compute their base output."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._default = None

    def set_default(self, mix: UnetMix) -> None:
        """The mix every row gets outside `per_row`."""
        self._default = _Plan.of([(mix, slice(None))])

    @contextmanager
    def per_row(self, spans: RowMixes) -> Iterator[None]:
        """U-Net calls inside apply to each range of rows its own mix."""
        outer = self._pass, self._in_pass
        self._pass, self._in_pass = _Plan.of(spans), True
        try:
            yield
        finally:
            self._pass, self._in_pass = outer

    def _add_updates(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        plan = self._pass if self._in_pass else self._default
        if plan is None:
            return output
        assert isinstance(layer, LoraLayer)
        x = args[0]
        if plan.rows != 1 and x.shape[0] != plan.rows:
            raise RuntimeError(f"LoRAs planned for {plan.rows} rows, the batch has {x.shape[0]}")
        for index, key in enumerate(plan.keys):
            if key not in layer.lora_A:
                continue
            down, up = layer.lora_A[key], layer.lora_B[key]
            hidden = down(x.to(down.weight.dtype))
            hidden = hidden * plan.row_scales(index, base_scale(layer, key), hidden)
            output = output + up(hidden)
        return output


def base_scale(layer: LoraLayer, key: str) -> float:
    """The adapter's scale at weight 1, as peft's `set_scale` computes it."""
    rank = layer.r[key] ** 0.5 if layer.use_rslora.get(key, False) else layer.r[key]
    return layer.lora_alpha[key] / rank
