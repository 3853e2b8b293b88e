"""Toy 2-D densities for flows, EBMs and diffusion sanity checks, scaled into the unit square.

Each density is sampled in a "native" space centered at the origin, then mapped into [0, 1]^2 by the
isotropic affine map ``u = 0.5 + scale * x`` (``TOY2D_SCALE`` below) so code that assumes data in [0, 1]
works unchanged. Native definitions (t, r uniform; z standard normal):

- ``8gaussians``: equal mixture of 8 isotropic Gaussians, means on the unit circle at angles 2*pi*k/8,
  std 0.1; scale 0.3, so in [0, 1]^2 the means lie on a circle of radius 0.3 around (0.5, 0.5), std 0.03.
  ``y`` is the component k.
- ``two_moons``: outer arc ``(cos t - 0.5, sin t - 0.25)``, inner arc its point reflection
  ``(0.5 - cos t, 0.25 - sin t)``, t ~ U[0, pi], plus N(0, 0.05^2) noise; scale 0.25. ``y`` is the moon.
- ``checkerboard``: uniform on the 8 "black" cells of a 4x4 board over [-2, 2)^2 (cells (i, j) with
  i + j even, counted from the corner); scale 0.25, which maps the board exactly onto [0, 1)^2. Unlabeled.
- ``spirals``: two arms; radius-angle n = sqrt(r) * 3*pi, point ``(-n cos n, n sin n) / 3`` (arm 0) or its
  negation (arm 1), plus N(0, 0.08^2) noise; scale 1/8. ``y`` is the arm.

Gaussian tails are not truncated: every density keeps at least 6 standard deviations between its
support's bulk and the square's edge (mass outside < 1e-9), so ``log_density`` is the exact untruncated
density and samples stay inside [0, 1]^2 in practice.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from lit_gen.datamodules.base import GenerativeDataModule
from lit_gen.errors import LitGenError

DENSITIES = ("8gaussians", "two_moons", "checkerboard", "spirals")
TOY2D_SCALE = {"8gaussians": 0.3, "two_moons": 0.25, "checkerboard": 0.25, "spirals": 0.125}
TOY2D_CLASSES = {"8gaussians": 8, "two_moons": 2, "checkerboard": None, "spirals": 2}
_STD_8GAUSSIANS = 0.1  # native std of each 8gaussians component
# Fixed per-split seeds: the splits never depend on the run's seed.
_SPLIT_SEEDS = {"train": 2_000_001, "val": 2_000_002, "test": 2_000_003}


def check_density(density: str) -> None:
    if density not in DENSITIES:
        raise LitGenError(f"unknown toy density {density!r}; choose one of: {', '.join(DENSITIES)}")


def sample_toy2d(density: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of ``density`` in [0, 1]^2: (float32 (n, 2), int64 labels (n,))."""
    check_density(density)
    g = generator
    f64 = torch.float64
    if density == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        angle = 2 * math.pi * k.to(f64) / 8
        noise = _STD_8GAUSSIANS * torch.randn(n, 2, generator=g, dtype=f64)
        x = torch.stack([angle.cos(), angle.sin()], 1) + noise
        y = k
    elif density == "two_moons":
        y = torch.randint(0, 2, (n,), generator=g)
        t = math.pi * torch.rand(n, generator=g, dtype=f64)
        outer = torch.stack([t.cos() - 0.5, t.sin() - 0.25], 1)
        sign = (1 - 2 * y).to(f64).unsqueeze(1)  # inner moon = point reflection of the outer one
        x = sign * outer + 0.05 * torch.randn(n, 2, generator=g, dtype=f64)
    elif density == "checkerboard":
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2  # row parity = column parity
        cell = torch.stack([col, row], 1).to(f64)
        x = cell + torch.rand(n, 2, generator=g, dtype=f64) - 2.0
        y = torch.zeros(n, dtype=torch.int64)
    else:  # spirals
        y = torch.randint(0, 2, (n,), generator=g)
        a = torch.rand(n, generator=g, dtype=f64).sqrt() * 3 * math.pi
        arm = torch.stack([-a * a.cos(), a * a.sin()], 1) / 3
        sign = (1 - 2 * y).to(f64).unsqueeze(1)
        x = sign * arm + 0.08 * torch.randn(n, 2, generator=g, dtype=f64)
    u = 0.5 + TOY2D_SCALE[density] * x
    return u.to(torch.float32), y.to(torch.int64)


def toy2d_log_density(density: str, u: torch.Tensor) -> torch.Tensor:
    """Exact log-density (nats, w.r.t. Lebesgue measure on [0, 1]^2) at points ``u`` of shape (..., 2).

    Available for ``8gaussians`` (Gaussian mixture) and ``checkerboard`` (log 2 on the black cells,
    -inf elsewhere); the moons and spirals have no closed form and raise ``LitGenError``.
    """
    check_density(density)
    if u.shape[-1] != 2:
        raise LitGenError(f"log_density expects points of shape (..., 2), got {tuple(u.shape)}")
    if density == "8gaussians":
        s = TOY2D_SCALE[density]
        sigma = _STD_8GAUSSIANS * s
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        means = 0.5 + s * torch.stack([angle.cos(), angle.sin()], 1)  # (8, 2)
        d2 = ((u.to(torch.float64).unsqueeze(-2) - means) ** 2).sum(-1)  # (..., 8)
        log_comp = -d2 / (2 * sigma**2) - math.log(2 * math.pi * sigma**2)
        return (torch.logsumexp(log_comp, -1) - math.log(8)).to(u.dtype)
    if density == "checkerboard":
        inside = ((u >= 0) & (u <= 1)).all(-1)  # float32 rounding can give exactly 1.0
        cell = (u.clamp(0, 1 - 1e-7) * 4).floor().long()
        black = (cell[..., 0] + cell[..., 1]) % 2 == 0
        # Uniform on 8 of 16 cells of area 1/16: density 1 / (8/16) = 2.
        out = torch.full(u.shape[:-1], -math.inf, dtype=u.dtype, device=u.device)
        return out.masked_fill(inside & black, math.log(2.0))
    raise LitGenError(
        f"toy density {density!r} has no closed-form log-density; "
        f"available for: {', '.join(d for d in DENSITIES if d in ('8gaussians', 'checkerboard'))}"
    )


class Toy2DDataModule(GenerativeDataModule):
    """Samples of a toy 2-D density in [0, 1]^2 (see the module docstring for the exact definitions).

    Each split is drawn with its own fixed seed, so splits are disjoint draws, identical across instances
    and independent of the run's seed. ``data_shape`` (2,), continuous (``num_levels`` None).
    """

    def __init__(
        self,
        *,
        density: str = "8gaussians",
        num_train: int = 50_000,
        num_val: int = 5_000,
        num_test: int = 10_000,
        batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, val_size=num_val, **kwargs)
        check_density(density)
        for what, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise LitGenError(f"{what} must be an integer >= 0, got {n!r}")
        if num_train == 0:
            raise LitGenError("num_train must be positive")
        self.density = density
        self.num_samples = {"train": num_train, "val": num_val, "test": num_test}
        self.name = f"toy2d-{density}"
        self.data_shape = (2,)
        self.num_levels = None
        self.num_classes = TOY2D_CLASSES[density]

    @property
    def has_log_density(self) -> bool:
        """Whether ``log_density`` is available (closed form) for this density."""
        return self.density in ("8gaussians", "checkerboard")

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats at points x (..., 2) of the [0, 1]^2 data space.

        Raises ``LitGenError`` for densities without a closed form (see ``has_log_density``).
        """
        return toy2d_log_density(self.density, x)

    def _build_splits(self) -> dict[str, Dataset]:
        splits = {}
        for split, n in self.num_samples.items():
            x, y = sample_toy2d(self.density, n, torch.Generator().manual_seed(_SPLIT_SEEDS[split]))
            splits[split] = TensorDataset(x, y)
        return splits
