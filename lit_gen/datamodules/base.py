"""The datamodule contract every generative model and the evaluation code rely on.

Items are ``(x, y)``: ``x`` float32 in [0, 1] (for discrete data exactly ``k / (K - 1)``), ``y`` an int64
class index (0 when unlabeled). ``name``, ``data_shape``, ``num_levels`` and ``num_classes`` are plain
attributes set in ``__init__`` so LightningCLI can link them into the model before ``setup`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from lit_gen.core.requests import SampleRequest, single_chunk
from lit_gen.errors import LitGenError

SPLITS = ("train", "val", "test")

# Every split permutation uses this seed, never the run's seed: the same data lands in the same split in
# every run, so metric caches keyed by ``name`` + split stay valid and results stay comparable.
SPLIT_SEED = 20240611


class GenerativeDataModule(L.LightningDataModule):
    """Base class: loaders, lazy cached splits, and argument checks shared by all datasets.

    Subclasses set ``name``, ``data_shape``, ``num_levels``, ``num_classes`` in ``__init__`` (cheaply, without
    loading data) and implement ``_build_splits`` returning ``{"train": ..., "val": ..., "test": ...}``.
    """

    name: str
    data_shape: tuple[int, ...]
    num_levels: int | None
    num_classes: int | None

    def __init__(
        self,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_size: int | float = 0.1,
        predict_num_samples: int = 64,
        predict_seed: int = 0,
        predict_labels: list[int] | None = None,
        predict_per_class: int | None = None,
        predict_interpolate: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive_int("eval_batch_size", eval_batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise LitGenError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        check_split_size("val_size", val_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_size = val_size
        _check_positive_int("predict_num_samples", predict_num_samples)
        self.predict_num_samples = predict_num_samples
        self.predict_seed = predict_seed
        if predict_labels is not None and predict_per_class is not None:
            raise LitGenError("set predict_labels (the classes to draw) or predict_per_class (N of each class), "
                              "not both")
        if predict_labels is not None and (not predict_labels or any(
                isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in predict_labels)):
            raise LitGenError(f"predict_labels must be a non-empty list of class indices >= 0, got {predict_labels!r}")
        if predict_per_class is not None:
            _check_positive_int("predict_per_class", predict_per_class)
        if predict_interpolate is not None and (isinstance(predict_interpolate, bool) or not isinstance(
                predict_interpolate, int) or predict_interpolate < 2):
            raise LitGenError(f"predict_interpolate must be an integer >= 2 (images per row), got {predict_interpolate!r}")
        self.predict_labels = predict_labels
        self.predict_per_class = predict_per_class
        self.predict_interpolate = predict_interpolate
        self._splits: dict[str, Dataset] | None = None

    # -- data ---------------------------------------------------------------------------------------------
    def _build_splits(self) -> dict[str, Dataset]:
        """Load the data and return the three split datasets (called at most once per instance)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build_splits()")

    def split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train", "val" or "test").

        Loads on first use and caches in the instance, so it works with or without ``setup``.
        """
        if split not in SPLITS:
            raise LitGenError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if self._splits is None:
            splits = self._build_splits()
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise LitGenError(f"{type(self).__name__}._build_splits() returned no {missing} split")
            self._splits = splits
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        # Loading is idempotent and cached, so calling it for every stage (and on every rank) is cheap.
        self.split_dataset("train")

    # -- loaders ------------------------------------------------------------------------------------------
    def _loader(self, split: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.split_dataset(split)
        # Neither the shuffle nor the loader's worker seeds draw from the global random stream: the data
        # order is a function of (seed, epoch), and a resumed run's model noise continues exactly.
        seed = torch.initial_seed()
        if shuffle:
            epoch, done = self._resume_position()
            sampler: Sampler | None = EpochShuffle(dataset, seed, epoch=epoch, skip=done * batch_size)
        else:
            sampler = evaluation_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained) where a resumed fit continues; (0, 0) for a fresh one.

        Read from the trainer's own loop progress, which Lightning restores from the checkpoint before it
        asks for the training loader: a run stopped after batch k of an epoch resumes at batch k + 1 of
        the same permutation, so every example is seen exactly once per epoch.
        """
        trainer = self.trainer  # None outside a Trainer
        if trainer is None or trainer.state.fn != "fit":
            return 0, 0
        loop = trainer.fit_loop
        progress = loop.epoch_loop.batch_progress
        epoch = loop.epoch_progress.current.processed  # the epoch Lightning will set on the sampler
        done = 0 if progress.is_last_batch else progress.current.processed
        return epoch, done

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The sample request of ``lit-gen predict``: ``predict_num_samples`` in chunks of ``eval_batch_size``,
        one :class:`~lit_gen.core.requests.SampleChunk` per batch.

        Sample j is drawn from its own generator seeded ``predict_seed + j``, so the samples depend neither on
        the chunk size nor on the device count. Labels (for conditional models): balanced (j mod C) by
        default; ``predict_labels`` names them (sample j gets ``predict_labels[j % len]``);
        ``predict_per_class`` draws that many of each class, class by class (``predict_num_samples`` is then
        N x C). ``predict_interpolate`` (families with a latent space): each of the samples becomes a row of
        that many images between two seeded latents. Under DDP, fewer chunks than processes are cut smaller so that every process gets one:
        Lightning refuses a predict run in which a rank has no batch.
        """
        labels = self.predict_request_labels()
        num = self.predict_num_samples if labels is None else len(labels)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = torch.distributed.get_world_size() if distributed else 1
        if num < world:
            raise LitGenError(f"predict_num_samples ({num}) must be at least the number of "
                              f"processes ({world}): each process draws at least one sample")
        chunk = self.eval_batch_size
        if -(-num // chunk) < world:
            chunk = -(-num // world)
        request = SampleRequest(num, self.predict_seed, chunk, self.num_classes, labels,
                                interpolation_steps=self.predict_interpolate or 0)
        return DataLoader(request, batch_size=1, shuffle=False, collate_fn=single_chunk)

    def predict_request_labels(self) -> torch.Tensor | None:
        """The labels named by ``predict_labels`` / ``predict_per_class`` (None: balanced by default)."""
        if self.predict_labels is None and self.predict_per_class is None:
            return None
        option = "predict_labels" if self.predict_labels is not None else "predict_per_class"
        if not self.num_classes:
            raise LitGenError(f"data.{option}: {self.name} has no classes")
        if self.predict_per_class is not None:
            return torch.arange(self.num_classes).repeat_interleave(self.predict_per_class)
        wrong = [c for c in self.predict_labels if c >= self.num_classes]
        if wrong:
            raise LitGenError(f"data.predict_labels: {wrong} are not classes of {self.name} "
                              f"(0 to {self.num_classes - 1})")
        chosen = torch.tensor(self.predict_labels, dtype=torch.long)
        return chosen[torch.arange(self.predict_num_samples) % len(chosen)]

    def __str__(self) -> str:
        # LightningDataModule.__str__ builds every dataloader, which would load the data just to print.
        return repr(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, data_shape={self.data_shape}, "
            f"num_levels={self.num_levels}, num_classes={self.num_classes})"
        )


class LevelTensorDataset(Dataset):
    """Discrete data kept as integer levels; items are ``(levels / (K - 1) as float32, label as int64)``.

    Storing uint8 levels keeps memory 4x smaller than float, and dividing at access time yields exactly the
    float32 values ``ToTensor`` produces (``k / 255``), so every model sees the same numbers.
    """

    def __init__(
        self,
        levels: torch.Tensor,
        labels: torch.Tensor,
        num_levels: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if levels.shape[0] != labels.shape[0]:
            raise LitGenError(f"{levels.shape[0]} samples but {labels.shape[0]} labels")
        self.levels = levels
        self.labels = labels.to(torch.int64)
        self.scale = float(num_levels - 1)
        self.transform = transform

    def __len__(self) -> int:
        return self.levels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.levels[index].to(torch.float32) / self.scale
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in one indexing op (the DataLoader calls this when it exists): half the time of one
        ``__getitem__`` per example on digits (benchmarks/data_loading.py). Same values and the same
        transform order as item by item."""
        index = torch.as_tensor(indices, dtype=torch.long)
        xs = (self.levels[index].to(torch.float32) / self.scale).unbind(0)
        if self.transform is not None:
            xs = [self.transform(x) for x in xs]
        return list(zip(xs, self.labels[index].unbind(0)))


class EpochShuffle(DistributedSampler):
    """A fresh permutation every epoch, drawn from ``(seed, epoch)`` only (Lightning calls ``set_epoch``).

    Resuming at epoch e reproduces epoch e's order without replaying the random stream, and ``skip``
    drops the examples of that epoch a stopped run had already trained on. Under DDP each rank takes
    every W-th index of the same permutation (padded to a multiple of W, as DistributedSampler does);
    being a DistributedSampler itself, Lightning keeps it instead of substituting its own.
    """

    def __init__(self, dataset: Dataset, seed: int, *, epoch: int = 0, skip: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed))
        self.epoch = int(epoch)
        self._skip_epoch, self._skip = int(epoch), int(skip)

    def __iter__(self) -> Iterator[int]:
        # A generator function: the permutation is drawn at the first batch, after set_epoch.
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if self.num_replicas > 1:
            order += order[: self.total_size - len(order)]
            order = order[self.rank : self.total_size : self.num_replicas]
        if self.epoch == self._skip_epoch and self._skip:
            order = order[self._skip :]
        self._skip = 0  # only the epoch the run was stopped in is partly done
        yield from order


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, every example of an evaluation split exactly once across the ranks (None otherwise).

    Lightning's default DistributedSampler pads the split with repeated examples so ranks get equal
    shares; that changes split means (NLL, bpd) with the number of processes. Ranks may get one batch
    more or less here; metrics are summed over ranks once per epoch, so that is safe.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip a (C, H, W) image left-right with probability 1/2 (train-time augmentation)."""
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def check_split_size(what: str, size: int | float) -> None:
    """A split size is an int count >= 0 or a float fraction in [0, 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise LitGenError(f"{what} must be an int (count) or a float (fraction), got {size!r}")
    if isinstance(size, float) and not 0.0 <= size < 1.0:
        raise LitGenError(f"{what} as a fraction must be in [0, 1), got {size}")
    if isinstance(size, int) and size < 0:
        raise LitGenError(f"{what} must be >= 0, got {size}")


def resolve_split_size(what: str, size: int | float, total: int) -> int:
    """Turn a count or fraction of ``total`` into a count (fractions round to nearest)."""
    check_split_size(what, size)
    count = round(size * total) if isinstance(size, float) else size
    if count >= total:
        raise LitGenError(f"{what}={size} leaves no training data (only {total} samples to split)")
    return count


def fixed_permutation(n: int, salt: int = 0) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``n`` and ``salt``, never on the global RNG."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED + salt))


def carve(dataset_size: int, sizes: Sequence[int], salt: int = 0) -> list[list[int]]:
    """Split ``range(dataset_size)`` into consecutive chunks of ``sizes`` of a fixed permutation; the last
    chunk takes the remainder. Indices within each chunk are sorted so reads stay roughly sequential."""
    perm = fixed_permutation(dataset_size, salt)
    chunks, start = [], 0
    for size in sizes:
        chunks.append(sorted(perm[start : start + size].tolist()))
        start += size
    chunks.append(sorted(perm[start:].tolist()))
    return chunks


def split_train_val_test(full: Dataset, test_size: int | float, val_size: int | float) -> dict[str, Subset]:
    """Fixed test / val / train subsets of one dataset; ``val_size`` fractions count what test leaves."""
    total = len(full)
    n_test = resolve_split_size("test_size", test_size, total)
    n_val = resolve_split_size("val_size", val_size, total - n_test)
    test_idx, val_idx, train_idx = carve(total, [n_test, n_val])
    return {"train": Subset(full, train_idx), "val": Subset(full, val_idx), "test": Subset(full, test_idx)}


def _check_positive_int(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LitGenError(f"{what} must be a positive integer, got {value!r}")


def carve_train_val(
    train_view: Dataset, val_view: Dataset, total: int, val_size: int | float, salt: int = 0
) -> tuple[Subset, Subset]:
    """Carve a fixed validation subset out of a training set of ``total`` items.

    ``train_view`` and ``val_view`` index the same underlying data (they differ only in train-time
    augmentation), so the two subsets are disjoint and together cover the whole set.
    """
    val_idx, train_idx = carve(total, [resolve_split_size("val_size", val_size, total)], salt)
    return Subset(train_view, train_idx), Subset(val_view, val_idx)
