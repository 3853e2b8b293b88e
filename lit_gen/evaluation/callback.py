"""GenerativeEvaluation: the one callback that samples and evaluates every family.

Every ``every_n_epochs`` validation epochs, and always at ``test``: draw samples through the protocol's
``sample``, save a grid under the run directory and send it to the logger, and score FID (optionally
KID and precision/recall) against real images of ``real_split``. The NLL and bits/dim of families with
a likelihood come from the module's own validation / test steps; at test this callback writes them, with
their kinds, next to the sample metrics in ``metrics.json``.

DDP: each rank draws its share of seeded chunks (:mod:`lit_gen.core.requests`), features are
all-gathered, and every rank computes the same metric in float64; nothing runs on rank zero only
except writing files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from lit_gen.core.records import SECONDS, Comparison, MetricRecord
from lit_gen.core.requests import SampleRequest, balanced_labels, chunk_sizes, draw_chunk, rank_chunks
from lit_gen.core.runtime import evaluating, gather_chunks
from lit_gen.errors import LitGenError
from lit_gen.evaluation import metrics
from lit_gen.evaluation.features import FEATURE_DIM, get_inception
from lit_gen.evaluation.images import class_rows, log_image, save_image_grid, save_scatter
from lit_gen.evaluation.report import (
    collect_metrics,
    print_metrics_table,
    print_sweep_table,
    write_metrics_json,
    write_sweep,
)


def run_dir(trainer: L.Trainer) -> Path:
    """The directory of this run: the logger's versioned dir, else the trainer's root dir.

    ``trainer.log_dir`` is a collective (it broadcasts from rank zero): every rank must call this, never
    only rank zero.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def checkpoint_stem(trainer: L.Trainer) -> str:
    """The name evaluated outputs are filed under: the checkpoint's file name without suffix."""
    return Path(trainer.ckpt_path).stem if trainer.ckpt_path else "no-checkpoint"


class GenerativeEvaluation(Callback):
    """Sample grids and sample-based metrics for any :class:`~lit_gen.models.base.GenerativeModule`.

    Args:
        every_n_epochs: evaluate at the end of every n-th validation epoch (0 disables validation-time
            evaluation; ``test`` always evaluates).
        val_num_samples: generated samples for FID at validation (small: a progress signal; 0 = grids only).
        test_num_samples: generated samples for FID at test (state N when you report a number).
        num_real: real images for the reference statistics (default: as many as generated).
        real_split: split of the datamodule the real statistics come from (``train`` as in most papers).
        fid / kid / precision_recall: which sample metrics to compute (all on Inception pool features).
        pr_neighbors: k of the k-NN radii in precision/recall (Kynkäänniemi et al. use 3).
        kid_subsets / kid_subset_size: KID's subset protocol.
        grid_size: samples in the saved grid (0 disables the grid).
        sample_batch_size: samples drawn per chunk (also the feature batch size).
        seed: base seed of every evaluation draw: sample j comes from a generator seeded ``seed + j``, and
            example i of the val / test split draws its loss and likelihood noise from ``seed + i``
            (``evaluation_seed`` of the model), so results do not depend on batch sizes or processes.
        inception_weights: explicit path to the FID Inception weights (else resolved automatically).
        cache_dir: where real-data features are cached (default: ``$LIT_GEN_CACHE`` or ``~/.cache/lit_gen``).
        write_metrics: write ``metrics.json`` at the end of ``test`` and ``validate``.
        output_dir: where ``test`` / ``validate`` write ``metrics.json``, grids and the sweep (default:
            ``<run>/eval/<checkpoint stem>/``, beside the checkpoint's run). Grids made during ``fit`` go to
            ``<run>/samples/``; every grid also goes to each logger that takes images.
        sweep: values of the model's sampling knob (``sampling_knob``: temperature, truncation, guidance
            scale, Langevin steps) to sweep at ``test``: for each, ``test_num_samples`` samples scored
            by FID, precision and recall (plus KID when enabled) against the same real features, written
            as ``sweep.md`` and ``sweep.png`` (metrics against the knob) with a grid per value.
        sweep_knob: another knob of ``sample`` to sweep instead (e.g. ``cads_noise_scale``); the other
            knobs keep their ``sample_kwargs`` values.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        val_num_samples: int = 200,
        test_num_samples: int = 1000,
        num_real: int | None = None,
        real_split: str = "train",
        fid: bool = True,
        kid: bool = False,
        precision_recall: bool = False,
        pr_neighbors: int = 3,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        grid_size: int = 64,
        sample_batch_size: int = 64,
        seed: int = 0,
        inception_weights: str | None = None,
        cache_dir: str | None = None,
        write_metrics: bool = True,
        sweep: list[int | float | None] | None = None,
        sweep_knob: str | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.num_samples = {"val": val_num_samples, "test": test_num_samples}
        self.num_real = num_real
        self.real_split = real_split
        self.use_fid, self.use_kid, self.use_pr = fid, kid, precision_recall
        self.pr_neighbors = pr_neighbors
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.grid_size = grid_size
        self.sample_batch_size = sample_batch_size
        self.seed = seed
        self.inception_weights = inception_weights
        self.cache_dir = cache_dir
        self.write_metrics = write_metrics
        self.output_dir = output_dir
        self.sweep = list(sweep) if sweep else []
        self.sweep_knob = sweep_knob
        self.last_nfe: float | None = None  # network evaluations per sample of the last draw (ODE samplers)
        self.sweep_rows: list[dict[str, Any]] = []
        self._real_features: dict[str, Tensor] = {}  # in-memory cache for repeated validation epochs
        self.records: dict[str, MetricRecord] = {}  # "<split>/<name>" -> the latest sample metric of that name

    @property
    def sample_metrics(self) -> dict[str, dict[str, Any]]:
        """The sample metrics' records as ``metrics.json`` entries, by ``<split>/<name>``."""
        return {key: record.as_dict() for key, record in self.records.items()}

    def split_records(self, split: str) -> list[MetricRecord]:
        return [record for record in self.records.values() if record.split == split]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # One seed for every evaluation draw: samples and the loss / likelihood noise of val and test.
        if hasattr(pl_module, "evaluation_seed"):
            pl_module.evaluation_seed = self.seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":  # ``lit-gen validate`` evaluates as ``test`` does
            self.evaluate(trainer, pl_module, "val")
            return
        if self.every_n_epochs <= 0 or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self.evaluate(trainer, pl_module, "val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self.report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test")
        self.sweep_rows = self.sweep_knob_values(trainer, pl_module) if self.sweep else []

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer, pl_module, "test")

    def evaluation_dir(self, trainer: L.Trainer) -> Path:
        """Where ``test`` / ``validate`` outputs go (call on every rank: it may be a collective)."""
        if self.output_dir:
            return Path(self.output_dir)
        return run_dir(trainer) / "eval" / checkpoint_stem(trainer)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        """One table and one ``metrics.json`` of the split's records (the model's and the sample metrics),
        and the sweep's rows when there was one."""
        records = [*getattr(pl_module, "metric_records", lambda split: [])(split), *self.split_records(split)]
        sweep = self.sweep_rows if split == "test" else []
        report = collect_metrics(trainer, pl_module, records, split, sweep=sweep,
                                 knob=self.knob_swept(pl_module))
        directory = self.evaluation_dir(trainer)
        if not trainer.is_global_zero:
            return
        print_metrics_table(report, records)
        if sweep:
            print_sweep_table(sweep, self.knob_swept(pl_module))
        if self.write_metrics:
            path = write_metrics_json(report, directory / "metrics.json")
            print(f"metrics written to {path}")
        if sweep:
            for path in write_sweep(sweep, self.knob_swept(pl_module), report, directory):
                print(f"sweep written to {path}")

    # ------------------------------------------------------------- evaluation
    def _wants_features(self, pl_module: Any) -> bool:
        is_image = len(getattr(pl_module, "data_shape", ())) == 3
        return is_image and (self.use_fid or self.use_kid or self.use_pr)

    def evaluate(self, trainer: L.Trainer, pl_module: Any, stage: str) -> dict[str, float]:
        """Draw samples, save/log the grid, compute and log the sample metrics of ``stage``."""
        with evaluating(pl_module):
            wants_features = self._wants_features(pl_module)
            num = self.num_samples[stage] if wants_features else 0
            num_drawn = max(num, self.grid_size)
            # Grid-only evaluations (N = 0) never load Inception nor embed the grid's images.
            features, grid, seconds = self._draw(trainer, pl_module, num_drawn, wants_features and num > 0)
            if grid is not None and grid.numel():
                self._save_grid(trainer, pl_module, grid, stage)
            records = []
            if wants_features and num > 0:
                real = self.real_features(trainer, pl_module, num)
                compared = Comparison(n_generated=num, n_real=real.shape[0], real_split=self.real_split,
                                      feature_extractor=self._extractor(pl_module).extractor_id, seed=self.seed)
                records += [MetricRecord(name, value, stage, compared=compared)
                            for name, value in self._sample_metrics(real, features[:num]).items()]
            if seconds is not None and num_drawn:
                records.append(MetricRecord("sample_sec_per_image", seconds, stage, unit=SECONDS,
                                            n_generated=num_drawn))
            if self.last_nfe is not None and num_drawn:
                records.append(MetricRecord("sample_nfe", self.last_nfe, stage, n_generated=num_drawn))
            for record in records:
                self.records[record.key] = record
                pl_module.log(record.key, record.value, on_epoch=True, sync_dist=False)
            return {record.name: record.value for record in records}

    def knob_swept(self, pl_module: Any) -> str | None:
        """``evaluation.sweep_knob`` when set, else the model's ``sampling_knob``."""
        return self.sweep_knob or getattr(pl_module, "sampling_knob", None)

    def sweep_knob_values(self, trainer: L.Trainer, pl_module: Any) -> list[dict[str, Any]]:
        """One row per knob value: sample metrics of ``test_num_samples`` samples (same seeds, same real
        features for every value, so the rows differ by the knob only). Runs on every rank."""
        knob = self.knob_swept(pl_module)
        if knob is None:
            raise LitGenError(f"evaluation.sweep: {type(pl_module).__name__} names no sampling knob")
        if not self._wants_features(pl_module) or self.num_samples["test"] <= 0:
            raise LitGenError("evaluation.sweep needs image data and test_num_samples > 0")
        num = self.num_samples["test"]
        rows = []
        with evaluating(pl_module):
            real = self.real_features(trainer, pl_module, num)
            for step, value in enumerate(self.sweep, 1):
                if trainer.is_global_zero:
                    print(f"lit-gen: sweep {knob}={value} ({step}/{len(self.sweep)}): {num} samples, "
                          f"{', '.join(self._sweep_metric_names())}", flush=True)
                kwargs = {**pl_module.sample_kwargs, knob: value}
                features, grid, seconds = self._draw(trainer, pl_module, num, True, kwargs)
                row = {knob: value, **self._sample_metrics(real, features[:num], with_pr=True),
                       "sample_sec_per_image": seconds, "n_generated": num, "n_real": real.shape[0]}
                if self.last_nfe is not None:
                    row["sample_nfe"] = self.last_nfe
                rows.append(row)
                if grid is not None and grid.numel():
                    self._save_grid(trainer, pl_module, grid, f"sweep_{knob}_{value}")
        return rows

    def _draw(self, trainer: L.Trainer, pl_module: Any, num: int, wants_features: bool,
              sample_kwargs: dict[str, Any] | None = None) -> tuple[Tensor | None, Tensor | None, float | None]:
        """This rank's chunks -> (all features, the first ``grid_size`` images, seconds per image)."""
        kwargs = pl_module.sample_kwargs if sample_kwargs is None else sample_kwargs
        if num <= 0:
            return None, None, None
        classes = pl_module.num_classes if getattr(pl_module, "conditional", False) else None
        request = SampleRequest(num, self.seed, self.sample_batch_size, classes)
        grid_chunks = math.ceil(self.grid_size / self.sample_batch_size)
        feats: dict[int, Tensor] = {}
        images: dict[int, Tensor] = {}
        sample_time = 0.0
        nfe_per_chunk: list[int] = []
        extractor = self._extractor(pl_module) if wants_features else None
        for chunk in request.for_rank(trainer.global_rank, trainer.world_size):
            start = time.perf_counter()
            x = draw_chunk(pl_module, chunk, kwargs).float()
            if getattr(pl_module, "last_sample_nfe", None) is not None:  # an ODE family's evaluations
                nfe_per_chunk.append(pl_module.last_sample_nfe)
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            sample_time += time.perf_counter() - start
            if not torch.isfinite(x).all():
                raise LitGenError(f"{type(pl_module).__name__}.sample() returned non-finite values")
            if chunk.index < grid_chunks:
                images[chunk.index] = x
            if extractor is not None:
                feats[chunk.index] = extractor(x.clamp(0, 1)).float()
        features = self._gather(trainer, pl_module, feats, request.sizes, (FEATURE_DIM,)) if extractor else None
        grid = self._gather(trainer, pl_module, images, request.sizes[:grid_chunks], tuple(pl_module.data_shape))
        total_time = torch.tensor(sample_time, device=pl_module.device, dtype=torch.float64)
        if trainer.world_size > 1:
            total_time = trainer.strategy.reduce(total_time, reduce_op="sum")
        # The solver's network evaluations per sample, averaged over this rank's chunks (an adaptive solver
        # takes as many as each chunk needs; a fixed-step one the same for all).
        self.last_nfe = sum(nfe_per_chunk) / len(nfe_per_chunk) if nfe_per_chunk else None
        return features, grid[: self.grid_size], float(total_time) / num

    @staticmethod
    def _gather(trainer: L.Trainer, pl_module: Any, local: dict[int, Tensor], sizes: list[int],
                shape: tuple[int, ...]) -> Tensor:
        """Every rank's chunks, in chunk order, on every rank."""
        return gather_chunks(local, sizes, trainer.world_size, trainer.strategy.all_gather, shape, pl_module.device)

    def _extractor(self, pl_module: Any):
        return get_inception(self.inception_weights, pl_module.device)

    def real_features(self, trainer: L.Trainer, pl_module: Any, num_generated: int) -> Tensor:
        """Inception features of the first N images of ``real_split``, from a cache when present.

        The key (in memory and on disk) holds a fingerprint of the exact images, the extractor's weights
        hash and its preprocessing: another split size, split seed, root or file is another entry, the same
        images find the old one. Every rank reads and hashes all N images (cheap next to Inception), so all
        ranks compute the same key; on a miss each embeds only its own chunks of the batches it read.
        """
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "split_dataset"):
            raise LitGenError("sample metrics need a lit-gen datamodule (with split_dataset) for real images")
        dataset = datamodule.split_dataset(self.real_split)
        num = min(self.num_real or num_generated, len(dataset))
        extractor = self._extractor(pl_module)
        sizes = chunk_sizes(num, self.sample_batch_size)
        mine = set(rank_chunks(len(sizes), trainer.global_rank, trainer.world_size))
        fingerprint = metrics.ImageFingerprint()
        batches: dict[int, Tensor] = {}
        # A train-time augmentation (CIFAR-10's random_flip) draws from the global CPU generator: under a
        # fixed seed the same config reads the same images (hence the same key) and training's stream is
        # left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)
            start = 0
            for index, size in enumerate(sizes):
                batch = torch.stack([dataset[i][0] for i in range(start, start + size)])
                start += size
                fingerprint.update(batch)
                if index in mine:
                    batches[index] = batch
        cache = metrics.FeatureCache(Path(self.cache_dir) / "features" if self.cache_dir else None)
        key = cache.key(datamodule.name, self.real_split, extractor.cache_id, num,
                        images=fingerprint.hexdigest()[:16], prep=extractor.preprocessing)
        features, status = self._real_features.get(key), "hit (in memory)"
        if features is None:
            features = cache.load(key)
            status = "miss" if features is None else f"hit (in {cache.root})"
            if trainer.world_size > 1:
                # Ranks must agree (a node without the shared cache file would otherwise gather alone).
                hits = trainer.strategy.reduce(
                    torch.tensor(float(features is not None), device=pl_module.device), reduce_op="sum")
                if float(hits) < trainer.world_size:
                    features, status = None, "miss (not on every rank)"
        if features is None:
            local = {index: extractor(batch.to(pl_module.device)).float() for index, batch in batches.items()}
            features = self._gather(trainer, pl_module, local, sizes, (FEATURE_DIM,))
            status += f", computed and saved in {cache.root}"
            if trainer.is_global_zero:
                cache.save(key, features.cpu())
        if trainer.is_global_zero:
            rank_zero_info(f"lit-gen: real-feature cache {status}: key {key}, N={num}")
        self._real_features[key] = features.cpu()
        return features.to(pl_module.device)

    def _sweep_metric_names(self) -> list[str]:
        return ["fid", *(["kid"] if self.use_kid else []), "precision", "recall"]

    def _sample_metrics(self, real: Tensor, fake: Tensor, with_pr: bool = False) -> dict[str, float]:
        real, fake = real.double().cpu(), fake.double().cpu()
        out: dict[str, float] = {}
        if self.use_fid or with_pr:
            out["fid"] = metrics.fid(real, fake)
        if self.use_kid:
            out["kid_mean"], out["kid_std"] = metrics.kid(real, fake, self.kid_subsets, self.kid_subset_size)
        if self.use_pr or with_pr:
            out["precision"], out["recall"] = metrics.precision_recall(real, fake, self.pr_neighbors)
        return out

    # ------------------------------------------------------------------ grids
    def _save_grid(self, trainer: L.Trainer, pl_module: Any, samples: Tensor, stage: str) -> None:
        """The grid as a PNG (in ``<run>/samples/`` during fit, else the evaluation directory) and to every
        logger that takes images; a conditional model's grid has one row per class."""
        fitting = trainer.state.fn == "fit"
        out_dir = run_dir(trainer) / "samples" if fitting else self.evaluation_dir(trainer)  # collectives
        if not trainer.is_global_zero:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stage}_epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}.png"
        samples = samples.detach().float().cpu()
        if samples.dim() == 4:
            labels = None
            if getattr(pl_module, "conditional", False):
                labels = balanced_labels(0, samples.shape[0], pl_module.num_classes)  # as _draw drew them
            samples, nrow = class_rows(samples, labels)
            grid = save_image_grid(samples.clamp(0, 1), path, nrow=nrow)
            log_image(trainer.loggers, f"{stage}/samples", grid, trainer.global_step)
        elif samples.dim() == 2 and samples.shape[1] == 2:
            save_scatter(samples, path)
