"""Step-level continuous batching: the jobs running together share every U-Net pass.

Each running job has a thread of its own, but only one of them computes at a time: the one
holding the *turn*. A job gives its turn up when it needs a U-Net pass (it *parks* the pass's
input) and when it ends. When no job holds or waits for the turn, the parked passes run as
one U-Net batch per compatible group (the same U-Net, latent shape and prompt length), each
row with its own timestep, and every parked job gets its slice of the output back and waits
for its turn to go on.

So a job that arrives takes a turn between two passes (encoding its prompt, drawing its
noise) and joins the next one; a job that ends stops parking and the others go on without
it. Jobs with different prompts, seeds, CFG scales, samplers, step counts and modes share
passes, as LLM servers share a batch between tokens. A lone job never waits for company:
its pass runs as soon as it parks, as it would alone. The rows of a batched pass do not
interact (the U-Net normalises per image), so each job's images equal its images alone
within floating-point tolerance.

Jobs with different LoRAs share passes too: each job's rows get its own weighted LoRAs
(`LoraAdapters.per_row`: each adapted layer runs the columns of every adapter the pass uses
in two products over all the rows, `lora_rows`); a job activates its own LoRAs again before
it uses its text encoder. Seamless-tiling jobs (circular padding) share passes only with each
other, and a job puts its padding back on the shared U-Net and VAE each time it gets its turn
(`on_resume`). DeepCache jobs (`deep_cache`)
share whole passes with any job and keep their own rows' deep features; their shallow
passes, which reuse those features, run as a group of their own. Everything a job does
outside the U-Net (text encoding, scheduler steps, VAE, PNG) happens while it holds the
turn, so no two jobs ever touch the shared pipeline at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from prometheus_client import Counter
from torch import nn

from services.generator import deep_cache
from services.generator.deep_cache import DeepCache
from services.generator.loras import LoraPlan
from services.generator.seamless import set_seamless

UNET_PASSES = Counter(
    "sdstack_generator_unet_passes_total",
    "U-Net passes of jobs: whole, or DeepCache's shallow path on kept features.",
    ["path"],
)


class UnetRunner(Protocol):
    def __call__(
        self,
        unet: nn.Module,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        cache: DeepCache | None = None,
    ) -> torch.Tensor:
        """(unet, latent input, timestep, prompt embeddings, the run's DeepCache if any) → the
        U-Net's output for those rows."""
        ...


def run_unet_alone(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    embeds: torch.Tensor,
    cache: DeepCache | None = None,
) -> torch.Tensor:
    """One U-Net pass for one job, as diffusers' pipelines call it (or DeepCache's)."""
    if cache is not None:
        return deep_cache.run_unet(unet, sample, timestep, embeds, cache)
    return unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)[0]


@dataclass(eq=False)
class _Pass:
    """One job's U-Net input, parked until its batch runs."""

    owner: int
    unet: nn.Module
    sample: torch.Tensor
    timestep: torch.Tensor
    embeds: torch.Tensor
    loras: LoraPlan | None
    seamless: bool = False
    cache: DeepCache | None = None
    output: torch.Tensor | None = None
    error: Exception | None = None
    done: bool = False
    shared: bool = False

    @property
    def group(self) -> tuple:
        """Passes with equal groups can run as one U-Net batch."""
        s, e = self.sample, self.embeds
        shapes = (tuple(s.shape[1:]), tuple(e.shape[1:]))
        return (id(self.unet), *shapes, s.dtype, s.device, self.seamless, self.shallow)

    @property
    def shallow(self) -> bool:
        """Runs DeepCache's shallow path on its kept features."""
        return self.cache is not None and self.cache.reuse


class JobTurn:
    """A running job's handle on the batcher: its U-Net runner and what it shared."""

    def __init__(self, batcher: StepBatcher) -> None:
        self._batcher = batcher
        self.shared_passes = 0
        """U-Net passes of this job that ran batched with other jobs' passes."""
        self.loras: LoraPlan | None = None
        """The job's LoRAs, once its pipeline is known: each of its passes runs with them."""
        self.seamless = False
        """Whether the job's passes run with circular padding (A1111 "Tiling")."""
        self.on_resume: Callable[[], None] | None = None
        """Called each time the job gets its turn back after a pass: other jobs have used the
        shared pipeline meanwhile, so the job puts back what it set on it."""

    def run_unet(
        self,
        unet: nn.Module,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        cache: DeepCache | None = None,
    ) -> torch.Tensor:
        """Parks this pass, lets the other jobs go on, and returns once its batch has run."""
        me = threading.get_ident()
        parked = self._batcher.park(
            _Pass(me, unet, sample, timestep, embeds, self.loras, self.seamless, cache)
        )
        UNET_PASSES.labels("shallow" if parked.shallow else "whole").inc()
        if self.on_resume is not None:
            self.on_resume()
        self.shared_passes += parked.shared
        assert parked.output is not None
        return parked.output


class StepBatcher:
    """Takes turns between the running jobs' threads and runs their parked U-Net passes."""

    _BATCH_RUNNING = -1

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holder: int | None = None
        self._queue: deque[int] = deque()
        self._parked: list[_Pass] = []
        self.batches_run = 0
        """U-Net batches run, each holding one or more jobs' passes."""

    @contextmanager
    def turn(self) -> Iterator[JobTurn]:
        """For a job's whole run, in its own thread: computes only while it holds the turn."""
        self._take_turn(queued=False)
        try:
            yield JobTurn(self)
        finally:
            self._give_turn()

    def park(self, parked: _Pass) -> _Pass:
        """Gives the turn up until `parked` has run and the turn comes back."""
        with self._changed:
            assert self._holder == parked.owner, "a U-Net pass parked by a thread without the turn"
            self._parked.append(parked)
        self._give_turn()
        self._take_turn(queued=True)
        if parked.error is not None:
            raise parked.error
        return parked

    def _take_turn(self, *, queued: bool) -> None:
        """Waits for this thread's turn; `queued` when the batch that ran its pass queued it."""
        me = threading.get_ident()
        with self._changed:
            if not queued:
                self._queue.append(me)
            while self._holder is not None or not self._queue or self._queue[0] != me:
                self._changed.wait()
            self._queue.popleft()
            self._holder = me

    def _give_turn(self) -> None:
        """Hands the turn on; when no job wants it, runs the parked passes first."""
        with self._changed:
            self._holder = None
            if self._queue or not self._parked:
                self._changed.notify_all()
                return
            batch, self._parked = self._parked, []
            self._holder = self._BATCH_RUNNING
        try:
            _run_batch(batch)
        finally:
            with self._changed:
                self.batches_run += 1
                self._queue.extend(parked.owner for parked in batch)
                self._holder = None
                self._changed.notify_all()


def _run_batch(batch: list[_Pass]) -> None:
    """Runs each compatible group of passes as one U-Net call and hands the rows back."""
    groups: dict[tuple, list[_Pass]] = {}
    for parked in batch:
        groups.setdefault(parked.group, []).append(parked)
    for group in groups.values():
        try:
            _run_group(group)
        except Exception as error:  # each job of the group fails with it; the others go on
            for parked in group:
                parked.error = error
        for parked in group:
            parked.done = True


def _run_group(group: list[_Pass]) -> None:
    """One U-Net call for the group, each job's rows with its own LoRAs."""
    set_seamless(group[0].unet, group[0].seamless)
    plans = [parked.loras for parked in group if parked.loras is not None]
    adapters = plans[0].adapters if plans else None
    if adapters is None:
        _run_together(group)
        return
    with adapters.per_row(_row_spans(group)):
        _run_together(group)


def _mix(parked: _Pass) -> tuple:
    return () if parked.loras is None else parked.loras.unet_mix


def _row_spans(group: list[_Pass]) -> list[tuple[tuple, slice]]:
    spans, start = [], 0
    for parked in group:
        rows = parked.sample.shape[0]
        spans.append((_mix(parked), slice(start, start + rows)))
        start += rows
    return spans


def _run_together(group: list[_Pass]) -> None:
    """One U-Net call on the group's rows. A shallow group passes each job's kept DeepCache
    features, in row order; a whole group keeps the features of every job that caches."""
    if len(group) == 1:
        only = group[0]
        only.output = run_unet_alone(only.unet, only.sample, only.timestep, only.embeds, only.cache)
        return
    rows = [parked.sample.shape[0] for parked in group]
    timesteps = [
        parked.timestep.to(torch.float32).reshape(-1).expand(count)
        for parked, count in zip(group, rows, strict=True)
    ]
    unet, sample = group[0].unet, torch.cat([parked.sample for parked in group])
    timestep, embeds = torch.cat(timesteps), torch.cat([parked.embeds for parked in group])
    if group[0].shallow:
        features = torch.cat([parked.cache.features for parked in group])  # type: ignore[union-attr,misc]
        output = deep_cache.shallow_pass(unet, sample, timestep, embeds, features)
    elif any(parked.cache is not None for parked in group):
        output, features = deep_cache.full_pass(unet, sample, timestep, embeds)
        for parked, kept in zip(group, features.split(rows), strict=True):
            if parked.cache is not None:
                parked.cache.features = kept
    else:
        output = run_unet_alone(unet, sample, timestep, embeds)
    for parked, part in zip(group, output.split(rows), strict=True):
        parked.output = part
        parked.shared = True
