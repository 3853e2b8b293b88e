"""GenerativeModule: the protocol every family implements, and what they all share.

The evaluation side (callback, CLI, benchmarks) knows a model only through this protocol:

- ``loss(x, labels)``: the family's training objective, a scalar or a dict with a ``"loss"`` entry;
  extra entries are logged beside it. (GANs override ``training_step`` for manual optimization.)
- ``sample(num_samples, *, labels=None, generator=None, **knobs)``: images in data space, [0, 1], data shape.
  Each family names its diversity-vs-quality knob in ``sampling_knob``.
- ``nll(x, labels=None, **kwargs) -> NLL``: per-example nats of the discrete data in its own levels, with a
  kind (exact / bound / estimate). Families without a likelihood leave ``likelihood_kind = None``.

``generator`` (of ``sample``, and of ``loss`` / ``nll`` where they draw noise) is a ``torch.Generator``,
None (the global stream), or a :class:`~lit_gen.core.seeds.ExampleGenerators`, one stream per example:
evaluation and ``predict`` pass the last, so every draw of example i depends on (seed, i) alone.

The data's shape, levels K and classes come from the datamodule (linked by the CLI), never typed twice.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_gen import __version__
from lit_gen.core.latents import slerp
from lit_gen.core.levels import dequantize, snap_to_levels
from lit_gen.core.likelihood import NLL, bits_per_dim
from lit_gen.core.means import SplitMeans
from lit_gen.core.numerics import full_float32_convolutions
from lit_gen.core.records import BITS_PER_DIM, NATS, MetricRecord, not_available
from lit_gen.core.requests import SampleChunk, draw_chunk
from lit_gen.core.runtime import (
    collect_rng_state,
    gather_from_ranks,
    qualified_name,
    restore_rng_state,
    seed_all,
)
from lit_gen.core.seeds import ExampleGenerators
from lit_gen.errors import (
    CheckpointError,
    ConfigurationError,
    LitGenError,
    check_sample_knobs,
    require_labels,
)

RNG_KEY = "lit_gen_rng_states"
TRAIN_SUMS_KEY = "lit_gen_train_sums"


@functools.cache
def _takes_generator(function: Any) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in parameters)


def _noise_argument(method: Any, source: ExampleGenerators | None) -> dict[str, Any]:
    """``{"generator": source}`` for a ``loss`` / ``nll`` that takes one; nothing for those that draw no
    noise (and, with no per-example source, nothing at all: their own default, the global stream)."""
    if source is None or not _takes_generator(getattr(method, "__func__", method)):
        return {}
    return {"generator": source}


class GenerativeModule(L.LightningModule):
    """Base class of every family.

    Args:
        data_shape: shape of one example, ``(C, H, W)`` for images (linked from the datamodule).
        num_levels: discrete levels K per dimension (17 for digits, 256 for 8-bit images), ``None`` for
            continuous data (linked from the datamodule).
        num_classes: number of classes of the data, ``None`` if unlabeled (linked from the datamodule).
        conditional: train and sample class-conditionally (needs ``num_classes``).
        optimizer: optimizer factory (``class_path``/``init_args`` in YAML).
        lr_scheduler: optional scheduler factory; stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"epoch"`` or ``"step"``.
        sample_kwargs: the sampler's knobs used by evaluation and ``lit-gen predict`` (e.g.
            ``{temperature: 0.8}``); arguments of this family's ``sample``.
        compile: ``torch.compile`` every network of the model (its direct submodules with parameters) in
            place, so parameter names and checkpoints stay those of the eager model.
    """

    #: "exact", "bound" or "estimate"; None when the family has no tractable likelihood.
    likelihood_kind: ClassVar[str | None] = None
    #: Base seed of the loss and likelihood noise at validation and test: example i of a split draws from
    #: ``evaluation_seed + i`` (the evaluation callback sets it to ``evaluation.seed``).
    evaluation_seed: int = 0
    #: Name of the family's diversity-vs-quality argument of ``sample`` (temperature, truncation, ...).
    sampling_knob: ClassVar[str | None] = None
    #: Units of the terms ``loss`` returns, where they have one (e.g. a VAE's KL in nats); reports show
    #: exactly these, and no unit for a term not listed.
    term_units: ClassVar[dict[str, str]] = {}
    #: Init arguments kept out of the checkpoint's hyperparameters: factories are code, not values, and
    #: leaving them out keeps checkpoints loadable with ``weights_only=True``.
    hparams_ignore: ClassVar[tuple[str, ...]] = ("optimizer", "lr_scheduler")
    #: Attributes holding those factories: shared, never cloned, when the module is deep-copied.
    factory_attributes: ClassVar[tuple[str, ...]] = ("optimizer_factory", "lr_scheduler_factory")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 8, 8),
        num_levels: int | None = 17,
        num_classes: int | None = None,
        conditional: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        sample_kwargs: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Collects the init arguments of the whole subclass chain: checkpoints record what built them.
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        if conditional and not num_classes:
            raise ConfigurationError(f"{type(self).__name__}: conditional=True needs a labeled dataset (num_classes)")
        if num_levels is not None and num_levels < 2:
            raise ConfigurationError(f"num_levels must be >= 2 or null, got {num_levels}")
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigurationError(f"lr_scheduler_interval must be 'epoch' or 'step', got {lr_scheduler_interval!r}")
        check_sample_knobs(type(self), sample_kwargs or {})
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.conditional = conditional
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.sample_kwargs = dict(sample_kwargs or {})
        self.compile_networks = compile
        # stage -> metric -> exact float64 sums and example counts (train epoch means, val / test means)
        self.split_means = SplitMeans()
        # metric -> (unit, likelihood kind), set where each split mean is made; read into metric records
        self._metric_meta: dict[str, tuple[str, str | None]] = {}
        # stage -> the records of its last completed epoch (loss terms, NLL, bits/dim)
        self.records: dict[str, list[MetricRecord]] = {}
        # stage -> the dataset indices of each batch of its evaluation loader (None: unknown), per epoch
        self._evaluation_batches: dict[str, list[list[int]] | None] = {}

    # ------------------------------------------------------------------ data
    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one example (bits/dim divides by it)."""
        return math.prod(self.data_shape)

    def split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """``(x, labels)`` from a datamodule batch; labels only when the model is conditional."""
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        return x, (y if self.conditional else None)

    def dequantize(self, x: Tensor) -> Tensor:
        """The shared dequantization policy: uniform noise within each of the K levels' bins.

        Families that model a density on [0, 1]^D train on this and add ``D log K`` when reporting NLL
        (:func:`lit_gen.core.likelihood.discrete_nll_from_density`). Continuous data passes through.
        """
        return x if self.num_levels is None else dequantize(x, self.num_levels)

    def snap_to_levels(self, x: Tensor) -> Tensor:
        """Generated samples onto the data's K levels (continuous data passes through)."""
        return snap_to_levels(x, self.num_levels)

    def model_labels(self, labels: Tensor | None) -> Tensor | None:
        """The labels a network sees: None for an unconditional model, else the given ones as long
        (missing ones are an error: a conditional model never silently draws unconditionally)."""
        if not self.conditional:
            return None
        return require_labels(type(self).__name__, labels).long()

    def tiled_labels(self, labels: Tensor | None, batch: int) -> Tensor | None:
        """:meth:`model_labels` for a batch of ``batch`` examples on this module's device, repeated when the
        batch holds several copies of the labelled examples (guidance's doubled batch)."""
        labels = self.model_labels(labels)
        if labels is None:
            return None
        if batch % labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels do not tile a batch of {batch}")
        return labels.to(self.device).repeat(batch // labels.shape[0])

    def check_unconditional(self) -> None:
        """For families with no conditional variant: refuse ``conditional: true`` when the model is built."""
        if self.conditional:
            raise ConfigurationError(f"{type(self).__name__} is unconditional (conditional: false)")

    def default_labels(self, num_samples: int, device: torch.device | None = None) -> Tensor | None:
        """Balanced labels (0, 1, ..., C-1, 0, ...) for conditional sampling; None when unconditional."""
        if not self.conditional:
            return None
        return torch.arange(num_samples, device=device or self.device) % self.num_classes

    # -------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def sample(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        **knobs: Any,
    ) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement sample()")

    def nll(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> NLL:
        raise NotImplementedError(f"{type(self).__name__} has no tractable likelihood")

    # Families with a latent space (VAE, flow, GAN) split ``sample`` into these two, so that ``predict`` can
    # interpolate between seeded latents; both take ``sample``'s knobs and use the ones that concern them.
    def draw_latents(self, num_samples: int, *, generator: Any = None, **knobs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no latent space to interpolate in")

    def decode_latents(self, z: Tensor, *, labels: Tensor | None = None, generator: Any = None,
                       **knobs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no latent space to interpolate in")

    @property
    def has_latents(self) -> bool:
        return type(self).draw_latents is not GenerativeModule.draw_latents

    @property
    def has_likelihood(self) -> bool:
        return self.likelihood_kind is not None

    def eval_nll_kwargs(self, stage: str) -> dict[str, Any]:
        """Extra arguments of ``nll`` at validation / test (e.g. a VAE's importance samples)."""
        return {}

    # ------------------------------------------------------------ Lightning
    def log_loss(self, stage: str, out: Tensor | dict[str, Tensor], batch_size: int) -> Tensor:
        terms = out if isinstance(out, dict) else {"loss": out}
        if "loss" not in terms:
            raise LitGenError(f"{type(self).__name__}.loss() returned a dict without a 'loss' entry")
        if stage == "train":
            self.log_train_terms(terms, batch_size)
        else:
            for name, value in terms.items():
                self._metric_meta.setdefault(name, (self.term_units.get(name, ""), None))
                self.split_means.add(stage, name, value.detach().double() * batch_size, batch_size)
        return terms["loss"]

    def log_train_terms(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """One training step's terms: summed for their epoch means, handed to the logger on the steps it
        writes (every ``log_every_n_steps``: ``train/<name>_step``), the loss to the progress bar.

        Lightning's ``self.log`` does bookkeeping of its own at every call; one call per term at every
        step made a small model's GPU step measurably slower than a hand-written loop
        (benchmarks/framework_overhead.py measures it). The epoch means (``train/<name>_epoch``) are float64 sums
        over every example of every rank, logged by :meth:`_log_train_epoch_means`.
        """
        for name, value in terms.items():
            self.split_means.add("train", name, value.detach().double() * batch_size, batch_size)
        connector = getattr(self.trainer, "_logger_connector", None)  # Lightning's rule for when it writes
        if self.loggers and (connector is None or connector.should_update_logs):
            # Straight to the loggers, at the step Lightning's own logging uses: through self.log, a term
            # absent from this step (a GAN's generator loss on a critic-only batch) was written again with
            # its last value, and only until the process restarted, so a resumed run's curves differed.
            metrics = {f"train/{name}_step": float(value.detach()) for name, value in terms.items()}
            metrics["epoch"] = self.current_epoch
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)
        if "loss" in terms and self.trainer.progress_bar_callback is not None:
            self.log("loss", terms["loss"].detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False,
                     batch_size=batch_size)

    def _log_train_epoch_means(self) -> None:
        for name, (total, count) in self._split_totals("train").items():
            self.log(f"train/{name}_epoch", total / count, on_epoch=True, sync_dist=True)
            self.log(f"train/{name}", total / count, logger=False, on_epoch=True, sync_dist=True)  # for monitors

    def _split_totals(self, stage: str) -> dict[str, tuple[Tensor, Tensor]]:
        """Each metric's (sum, number of examples) over every example on every rank; the split is cleared."""
        reduce = None
        if self.trainer.world_size > 1:
            def reduce(t: Tensor) -> Tensor:
                return self.trainer.strategy.reduce(t, reduce_op="sum")
        return self.split_means.pop(stage, reduce)

    def _log_split_means(self, stage: str) -> None:
        """Exact split means over every example on every rank, in float64, logged and kept as records."""
        totals = self._split_totals(stage)
        records = []
        for name, (total, count) in totals.items():
            mean = total / count
            self.log(f"{stage}/{name}", mean, prog_bar=name == "loss", sync_dist=True)
            unit, kind = self._metric_meta.get(name, ("", None))
            details = self.likelihood_details(name) if kind is not None else {}
            records.append(MetricRecord(name, float(mean), stage, unit=unit, kind=kind, n=int(count),
                                        extra=dict(details)))
        if totals and not self.has_likelihood:
            records.append(not_available(stage, type(self).__name__))
        self.records[stage] = records
        if totals:  # the N that reports state beside every split mean (every evaluation step logs a loss)
            self.log(f"{stage}/num_examples", totals["loss"][1], sync_dist=True)

    def likelihood_details(self, name: str) -> dict[str, Any]:
        """How the likelihood metric ``name`` (``nll``, ``bpd``, a term) was computed, where a family has
        choices a reader needs beside the number (an ODE's solver, tolerances, probes); written into its
        ``metrics.json`` entry. None by default."""
        return {}

    def metric_records(self, stage: str) -> list[MetricRecord]:
        """The records of ``stage``'s last completed evaluation epoch (empty before one)."""
        return list(self.records.get(stage, []))

    def on_validation_epoch_start(self) -> None:
        self.split_means.reset("val")
        self._evaluation_batches.pop("val", None)

    def on_validation_epoch_end(self) -> None:
        self._log_split_means("val")

    def on_test_epoch_start(self) -> None:
        self.split_means.reset("test")
        self._evaluation_batches.pop("test", None)

    def on_test_epoch_end(self) -> None:
        self._log_split_means("test")

    def check_finite(self, loss: Tensor) -> None:
        """Stop at the first non-finite loss, before the optimizer step writes NaN into the weights."""
        if not torch.isfinite(loss).all():
            raise LitGenError(
                f"non-finite loss ({loss.item()}) at global step {self.global_step}, epoch "
                f"{self.current_epoch}; training stopped, checkpoints already written are untouched "
                "(lower the learning rate, enable gradient clipping, or use a wider precision)"
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, labels = self.split_batch(batch)
        loss = self.log_loss("train", self.loss(x, labels), x.shape[0])
        self.check_finite(loss)
        return loss

    def evaluation_generators(self, stage: str, batch_idx: int | None,
                              batch_size: int) -> ExampleGenerators | None:
        """Per-example generators of batch ``batch_idx`` of the ``stage`` ("val" / "test") loader.

        Example i of the split (its index in the split's dataset) draws from ``evaluation_seed + i``,
        whichever batch and rank hold it: the loss and likelihood noise of evaluation (IWAE, dequantization,
        a bound's timesteps) then does not depend on the batch size or the number of processes. The
        indices are read from the loader's own batch sampler (sequential on one process, every W-th
        index per rank under lit-gen's unrepeated DDP sampler), listed once per epoch. None, and noise
        from the global stream as before, outside a trainer or when the loader has no batch sampler.
        """
        if batch_idx is None or self._trainer is None:
            return None
        if stage not in self._evaluation_batches:
            self._evaluation_batches[stage] = self._list_evaluation_batches(stage)
        batches = self._evaluation_batches[stage]
        if batches is None or batch_idx >= len(batches) or len(batches[batch_idx]) != batch_size:
            if not getattr(self, "_warned_global_noise", False):
                self._warned_global_noise = True
                rank_zero_warn(f"{stage} batch {batch_idx}: the example indices of the evaluation loader "
                               "are unknown; its noise comes from the global stream and depends on the batch "
                               "size and the number of processes")
            return None
        return ExampleGenerators(self.evaluation_seed, batches[batch_idx], self.device)

    def _list_evaluation_batches(self, stage: str) -> list[list[int]] | None:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        batch_sampler = getattr(loader, "batch_sampler", None)
        if batch_sampler is None:  # an iterable dataset, or one that batches itself
            return None
        return [[int(i) for i in batch] for batch in batch_sampler]

    def _evaluation_step(self, stage: str, batch: Any, batch_idx: int | None = None) -> None:
        x, labels = self.split_batch(batch)
        source = self.evaluation_generators(stage, batch_idx, x.shape[0])
        self.log_loss(stage, self.loss(x, labels, **_noise_argument(self.loss, source)), x.shape[0])
        if not self.has_likelihood:
            return
        with full_float32_convolutions():  # reported likelihoods do not depend on the GPU's TF32 setting
            out = self.nll(x, labels, **self.eval_nll_kwargs(stage), **_noise_argument(self.nll, source))
        self.log_nll(stage, "nll", out.nats, out.kind)
        for name, (nats, kind) in out.terms.items():
            self.log_nll(stage, name, nats, kind)

    def log_nll(self, stage: str, name: str, nats: Tensor, kind: str) -> None:
        """Per-example nats (and bits/dim for discrete data) of a likelihood of ``kind`` into the split's
        exact float64 means."""
        nats = nats.detach().double()
        self._metric_meta[name] = (NATS, kind)
        self.split_means.add(stage, name, nats, nats.numel())
        if self.num_levels is not None:
            bpd_name = "bpd" if name == "nll" else f"{name}_bpd"
            self._metric_meta[bpd_name] = (BITS_PER_DIM, kind)
            self.split_means.add(stage, bpd_name, bits_per_dim(nats, self.num_dims), nats.numel())

    def likelihood_kinds(self) -> dict[str, str]:
        """Metric name -> kind, for reports (the kinds of ``nll`` and of its extra terms)."""
        if not self.has_likelihood:
            return {}
        kinds = {"nll": self.likelihood_kind, "bpd": self.likelihood_kind}
        kinds.update(self.extra_likelihood_kinds())
        return kinds

    def extra_likelihood_kinds(self) -> dict[str, str]:
        """Kinds of the extra ``NLL.terms`` this family reports (name -> kind)."""
        return {}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step("test", batch, batch_idx)

    def predict_step(self, batch: SampleChunk, batch_idx: int) -> dict[str, Any]:
        """One chunk of the seeded sample request the datamodule made (:class:`~lit_gen.core.requests.SampleRequest`).

        Sample ``j`` of the request is drawn from its own generator seeded ``seed + j``, so the sample set
        of ``lit-gen predict`` depends neither on the chunk size nor on how many devices drew it.
        """
        if batch.labels_named and not self.conditional:
            raise ConfigurationError(f"{type(self).__name__} is unconditional: it cannot sample chosen labels "
                                     "(drop data.predict_labels / predict_per_class, or train conditional: true)")
        if batch.interpolation_steps:
            return self.predict_interpolations(batch)
        images = draw_chunk(self, batch, self.sample_kwargs)
        labels = batch.labels if self.conditional else None
        return {"chunk": batch.index, "start": batch.start, "images": images.float().cpu(),
                "labels": None if labels is None else labels.cpu()}

    def predict_interpolations(self, chunk: SampleChunk) -> dict[str, Any]:
        """Row j of the chunk: ``interpolation_steps`` images along the path between two latents drawn from
        the generator seeded ``seed + j`` (spherical for the Gaussian latents of every family here), with
        row j's label for a conditional model."""
        if not self.has_latents:
            raise ConfigurationError(f"{type(self).__name__} has no latent space: data.predict_interpolate "
                                     "works for the VAE, flow and GAN families")
        steps = chunk.interpolation_steps
        generators = ExampleGenerators.for_range(chunk.seed, chunk.start, chunk.size, self.device)
        with torch.no_grad():
            start = self.draw_latents(chunk.size, generator=generators, **self.sample_kwargs)
            end = self.draw_latents(chunk.size, generator=generators, **self.sample_kwargs)
            path = slerp(start, end, torch.linspace(0, 1, steps)).flatten(0, 1)
            labels = None
            if self.conditional:
                labels = chunk.labels.to(self.device).repeat_interleave(steps)
            row_generators = ExampleGenerators(chunk.seed, [chunk.start + i // steps for i in range(len(path))],
                                               self.device)
            images = self.decode_latents(path, labels=labels, generator=row_generators, **self.sample_kwargs)
        return {"chunk": chunk.index, "start": chunk.start * steps, "images": images.float().cpu(),
                "labels": None if labels is None else labels.cpu(), "row_length": steps}

    def setup(self, stage: str) -> None:
        # Here rather than in configure_model: Lightning's WeightAveraging warns about models that
        # override configure_model (it assumes sharding).
        if self.compile_networks:
            for module in self.children():
                if any(True for _ in module.parameters()):
                    module.compile()  # nn.Module.compile: no "_orig_mod." prefix in the state dict

    def on_train_start(self) -> None:
        # seed_everything gives every rank the same seed, so under DDP every rank would draw the same noise:
        # the same GAN latents, diffusion timesteps, VAE noise and EBM chains on each rank, N-fold
        # duplicated work. Each rank gets its own stream (rank 0 keeps the seed's; one process is
        # unchanged). A resumed run then restores the saved per-rank streams at its first epoch start.
        world = self.trainer.world_size
        if world > 1:
            base = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
            seed = (base + 1_000_003 * self.trainer.global_rank) % 2**32  # distinct for every rank
            seed_all(seed)

    def on_train_epoch_end(self) -> None:
        self._log_train_epoch_means()

    def on_train_epoch_start(self) -> None:
        self.split_means.reset("train")
        self._restore_resumed_state()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A run resumed in the middle of an epoch gets no on_train_epoch_start.
        self._restore_resumed_state()

    def _restore_resumed_state(self) -> None:
        """Each rank's random stream and partial epoch sums from the checkpoint, once, just before training
        goes on: not at load time, since the sanity check and the EMA/evaluation setup that run between
        loading and the first training batch would otherwise consume the restored stream."""
        states = getattr(self, "_resume_rng_states", None)
        if not states:
            return
        self._resume_rng_states = None
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(states) == world:
            restore_rng_state(states[rank])
        else:  # resumed on another number of processes: rank 0's stream, distinct per rank
            restore_rng_state(states[0])
            torch.manual_seed(int(torch.randint(2**62, ())) + rank)
        sums = getattr(self, "_resume_train_sums", None)
        self._resume_train_sums = None
        if sums and len(sums) == world:  # the epoch was stopped part-way: its means go on where they were
            self.split_means.load("train", sums[rank], self.device)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def __deepcopy__(self, memo: dict[int, Any]) -> GenerativeModule:
        """A copy of the networks and state that shares the optimizer and scheduler factories.

        Weight averaging (EMA) deep-copies the module. Factories are code, not state, and the ones
        LightningCLI builds reach the CLI itself (its config, the datamodule, the trainer and, under
        ``ddp``, the launcher's process handles, which hold locks): copying them failed under DDP and
        cloned the whole dataset in one process.
        """
        for name in self.factory_attributes:
            factory = getattr(self, name)
            memo[id(factory)] = factory
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))  # LightningModule drops the trainer
        return copied

    # ----------------------------------------------------------- checkpoints
    def checkpoint_identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be loaded into this model."""
        return {
            "model": qualified_name(self),
            "data_shape": list(self.data_shape),
            "num_levels": self.num_levels,
            "num_classes": self.num_classes,
            "conditional": self.conditional,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_gen"] = {**self.checkpoint_identity(), "version": __version__}
        # Every rank's random state (this hook runs on all ranks), so a resumed run draws the same data
        # order and noise as an uninterrupted one. Plain tensors and lists: loadable with weights_only.
        checkpoint[RNG_KEY] = gather_from_ranks(collect_rng_state())
        # The running sums of a training epoch stopped part-way (empty at an epoch's end), every rank's.
        checkpoint[TRAIN_SUMS_KEY] = gather_from_ranks(self.split_means.state("train"))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_hparams = dict(checkpoint.get("hyper_parameters") or {})
        self._resume_rng_states = checkpoint.get(RNG_KEY)
        self._resume_train_sums = checkpoint.get(TRAIN_SUMS_KEY)
        saved = checkpoint.get("lit_gen")
        if saved is None:
            raise CheckpointError("not a lit-gen checkpoint (it has no 'lit_gen' record)")
        mine = self.checkpoint_identity()
        for key, value in mine.items():
            if key in saved and saved[key] != value:
                raise CheckpointError(
                    f"checkpoint was written by a model with {key}={saved[key]!r}, "
                    f"but this config builds one with {key}={value!r}"
                )

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            saved = getattr(self, "_checkpoint_hparams", {}) or {}
            differ = [f"{k}={saved[k]!r} in the checkpoint, {v!r} in the config"
                      for k, v in self.hparams.items() if k in saved and saved[k] != v]
            detail = "; ".join(differ) if differ else str(err).splitlines()[1].strip()
            raise CheckpointError(f"checkpoint weights do not fit the configured {type(self).__name__}: {detail}") \
                from None
