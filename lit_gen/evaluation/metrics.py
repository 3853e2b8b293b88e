"""Sample-quality metrics on feature vectors (FID, KID, precision/recall) and an on-disk feature cache.

KID and precision/recall call torch-fidelity's own functions and FID evaluates its formula (so numbers
match ``torch_fidelity.calculate_metrics``), all on float64 features. torch-fidelity's convention is
input1 = generated, input2 = real; we pass (fake, real) in that order so that even the order-dependent
parts (KID's subset sampling) agree with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

from lit_gen.core.runtime import atomic_torch_save, cache_dir

__all__ = ["FeatureCache", "ImageFingerprint", "fid", "fid_from_statistics", "kid", "precision_recall"]

log = logging.getLogger(__name__)


def _as_float64(name: str, features) -> torch.Tensor:
    t = torch.as_tensor(features)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) tensor, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t.detach().to("cpu", torch.float64).contiguous()


def _pair(real_features, fake_features, min_samples: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    real = _as_float64("real_features", real_features)
    fake = _as_float64("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    if len(real) < min_samples or len(fake) < min_samples:
        raise ValueError(
            f"need at least {min_samples} samples per set, got real={len(real)}, fake={len(fake)}"
        )
    return real, fake


def _cov_factor(features: torch.Tensor) -> torch.Tensor:
    """F with F.T @ F == the sample covariance of ``features`` (N, D), never bigger than (min(N, D), D).

    N <= D: the centered features themselves. N > D: the R of a QR of them (no eigendecomposition).
    """
    n = features.shape[0]
    centered = (features - features.mean(dim=0)) / (n - 1) ** 0.5
    if n <= features.shape[1]:
        return centered
    return torch.linalg.qr(centered, mode="r")[1]


def fid(real_features, fake_features) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets, in float64.

    FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f): torch-fidelity's
    ``fid_statistics_to_metric`` formula. With S = F^T F, the eigenvalues of S_r S_f are those of the small
    symmetric K K^T, K = F_r F_f^T, so tr sqrt(S_r S_f) = sum(sqrt(eigvalsh(K K^T))). torch-fidelity takes
    ``eigvals`` of the non-symmetric 2048 x 2048 product instead: far slower on a CPU (it would dominate
    an evaluation whose real features are cached), and spurious complex eigenvalues when N < 2048.
    tests/evaluation/test_metrics.py checks that both agree.
    """
    real, fake = _pair(real_features, fake_features)  # a covariance needs >= 2 samples
    diff = real.mean(dim=0) - fake.mean(dim=0)
    f_real, f_fake = _cov_factor(real), _cov_factor(fake)
    k = f_real @ f_fake.T
    gram = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
    trace_sqrt = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum()
    value = diff @ diff + (f_real * f_real).sum() + (f_fake * f_fake).sum() - 2 * trace_sqrt
    return float(value)


def _statistics(name: str, mu, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.as_tensor(mu).detach().to("cpu", torch.float64)
    sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
    if mu.dim() != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mu (D,) and sigma (D, D), got {tuple(mu.shape)} and {tuple(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return mu, sigma


def _without_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """A PSD matrix's eigenvalues, those under its numerical-rank tolerance (max * size * eps, numpy's
    ``matrix_rank``) set to 0. Statistics of N < D images have D - N + 1 zero eigenvalues that round-off
    makes about +-1e-13 of the largest; their square roots alone put FID up to 1e-3 off."""
    tol = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def fid_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians given by mean and covariance, in float64.

    The formula of :func:`fid` for sets known only by their statistics (the ``mu``/``sigma`` files that
    pytorch-fid and torch-fidelity users exchange): |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
    S1 S2 has the eigenvalues of the symmetric PSD S1^1/2 S2 S1^1/2, so two ``eigh`` solves replace
    torch-fidelity's ``eigvals`` of a non-symmetric product (no spurious complex eigenvalues). :func:`fid`
    stays on its features-only route: with N < D it never forms a D x D matrix.
    """
    mu1, sigma1 = _statistics("statistics 1", mu1, sigma1)
    mu2, sigma2 = _statistics("statistics 2", mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    evals, evecs = torch.linalg.eigh(sigma1)
    root = (evecs * _without_round_off(evals).sqrt()) @ evecs.T
    middle = root @ sigma2 @ root
    trace_sqrt = _without_round_off(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def kid(
    real_features, fake_features, subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD², cubic polynomial kernel): (mean, std) over subsets.

    ``subset_size`` is clamped to the smaller set so small evaluations work; ``seed`` is torch-fidelity's
    default ``rng_seed`` so results equal ``calculate_metrics(kid=True, kid_subset_size=...)``.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    real, fake = _pair(real_features, fake_features)  # unbiased MMD divides by m(m-1)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(int(subset_size), len(real), len(fake))
    if size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    out = kid_features_to_metric(
        fake, real, kid_subsets=int(subsets), kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), returned as (precision, recall).

    precision = fraction of fake samples inside the union of real k-NN balls; recall = fraction of real
    samples inside the union of fake k-NN balls. A ball's radius is the distance to the k-th nearest
    *other* sample of its own set. torch-fidelity's ``prc_features_to_metric(features_1, features_2)``
    implements exactly this with features_1 = generated, features_2 = real (its kth-value(k+1) skips the
    zero self-distance), so we call it as (fake, real). The paper (and torch-fidelity's ``prc`` default)
    uses VGG16 fc2 features; this function is feature-agnostic, and values on Inception features are not
    comparable to VGG16-based numbers.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real, fake = _pair(real_features, fake_features, min_samples=k + 1)  # k neighbours besides itself
    # Row blocks of 1000 keep the distance matrices at ~1000 x N instead of N x N (10k x 10k float64 is
    # 800 MB each); the result is the same as the all-at-once variant.
    out = prc_features_to_metric(
        fake, real, prc_neighborhood=int(k), prc_batch_size=1000, save_cpu_ram=True, verbose=False
    )
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _safe(part) -> str:
    return _UNSAFE.sub("-", str(part)).strip("-.") or "_"


class ImageFingerprint:
    """SHA-256 of an ordered image set exactly as it is fed to a feature extractor.

    Hashes the raw bytes of every image plus the dtype, the per-image shape and the count, so any changed
    pixel, order, selection or dtype gives another digest, while the same images fed in other batch sizes
    give the same one. Costs one pass over memory the caller already holds (~1 GB/s).
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._layout: tuple[str, tuple[int, ...]] | None = None
        self.count = 0

    def update(self, batch: torch.Tensor) -> None:
        """Add the images of ``batch`` (N, ...) after those already seen."""
        batch = batch.detach().cpu().contiguous()
        layout = (str(batch.dtype), tuple(batch.shape[1:]))
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:  # bytes alone would let (2, 8, 8) and (1, 16, 8) images collide
            raise ValueError(f"batch of {layout} after batches of {self._layout}")
        self._sha.update(batch.reshape(-1).view(torch.uint8).numpy())
        self.count += batch.shape[0]

    def hexdigest(self) -> str:
        sha = self._sha.copy()  # the layout goes last, so update() can stream batches
        sha.update(repr((self._layout, self.count)).encode())
        return sha.hexdigest()


class FeatureCache:
    """Features of a fixed image set (e.g. the real test split) kept on disk between evaluations.

    One ``.pt`` file per key under ``root``; writes are atomic, and an unreadable file counts as a miss
    (the next ``save`` overwrites it) so a crash mid-write or a bad disk never breaks an evaluation.
    The key is whatever the caller names; for real-data features the evaluation callback includes an
    :class:`ImageFingerprint` of the images, the extractor's weights hash and its preprocessing.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_dir() / "features"
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(dataset: str, split: str, extractor_id: str, num: int, **extra) -> str:
        """Readable, filesystem-safe key; a short hash of the exact inputs keeps sanitized names distinct."""
        parts = [dataset, split, extractor_id, f"n{int(num)}"] + [f"{k}={extra[k]}" for k in sorted(extra)]
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:10]
        readable = "__".join(_safe(p) for p in parts)[:180]  # stay well under the 255-byte name limit
        return f"{readable}__{digest}"

    def path(self, key: str) -> Path:
        if _safe(key) != key:
            raise ValueError(f"not a FeatureCache key: {key!r}")
        return self.root / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(features, torch.Tensor) or features.dim() != 2:
                raise ValueError(f"expected a 2-D tensor, found {type(features).__name__}")
        except Exception as err:  # corrupt/truncated/foreign file: recompute rather than crash
            log.warning("Ignoring unreadable feature cache file %s (%s); it will be recomputed.", path, err)
            self.misses += 1
            return None
        self.hits += 1
        return features

    def save(self, key: str, features: torch.Tensor) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: readers see the old file or the new one, never half of one.
        atomic_torch_save(features.detach().cpu().contiguous(), path)
        return path
