"""Vector quantization (van den Oord et al. 2017): nearest codebook entries, straight-through gradients,
EMA or loss-driven codebook updates, and restarts of codes nobody uses.

An encoder output map ``z_e`` of shape ``(B, D, h, w)`` is quantized position by position to its nearest
of K codebook vectors (squared Euclidean distance; ties go to the lower index). The decoder sees
``z_e + sg(z_q - z_e)``: the value is ``z_q``, the gradient flows to the encoder as if quantization were the
identity (straight-through). The codebook itself learns either

- ``ema``: each code moves to the running mean of the encoder outputs assigned to it (no gradient), with
  Laplace smoothing of the counts so a rarely used code is not divided by a vanishing count:
      N_k <- d N_k + (1 - d) n_k,       m_k <- d m_k + (1 - d) sum_{i -> k} z_i,
      e_k = m_k / Ñ_k,                  Ñ_k = (N_k + eps) / (N + K eps) * N,    N = sum_k N_k;
- ``loss``: by gradient descent on the codebook term ``||sg(z_e) - z_q||^2`` added to the loss.

Both add the commitment term ``beta ||z_e - sg(z_q)||^2`` for the encoder. Codes unused for a whole window
of training steps are restarted at encoder outputs of the current batch, so the codebook does not
collapse onto a few codes. Under DDP the counts, sums and usage are summed over the ranks and the restart
vectors are rank 0's, so every rank holds the same codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError, check_sizes

CODEBOOK_UPDATES = ("ema", "loss")


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_ranks_sum(t: Tensor) -> Tensor:
    """``t`` summed over every rank, in place (unchanged in one process)."""
    if _distributed():
        torch.distributed.all_reduce(t)
    return t


def from_rank_zero(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank, in place (unchanged in one process)."""
    if _distributed():
        torch.distributed.broadcast(t, src=0)
    return t


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row for each row of ``z`` ``(N, D)``; ``codebook`` is ``(K, D)``."""
    distances = (z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)[None, :])
    return distances.argmin(dim=1)


def smoothed_counts(counts: Tensor, epsilon: float) -> Tensor:
    """Laplace-smoothed counts ``(N_k + eps) / (N + K eps) * N``: same total, never zero."""
    total = counts.sum()
    return (counts + epsilon) / (total + counts.numel() * epsilon) * total


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of the code frequencies: K when all codes are used equally, 1 for a single code."""
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


@dataclass
class Quantized:
    """What one quantization gives the model.

    ``z_q`` carries straight-through gradients to the encoder; ``commitment`` and ``codebook_loss`` are
    per example (summed over the code map, like a reconstruction's nats); ``counts`` is how often each code
    was chosen in this batch.
    """

    z_q: Tensor
    codes: Tensor
    commitment: Tensor
    codebook_loss: Tensor | None
    counts: Tensor


class VectorQuantizer(nn.Module):
    """A K x D codebook with nearest-neighbour quantization.

    Args:
        num_codes: K.
        code_dim: D, the encoder's output channels.
        update: ``"ema"`` (running means, no gradient to the codebook) or ``"loss"`` (codebook term).
        decay: d of the EMA update.
        epsilon: Laplace smoothing of the EMA counts.
        restart_every: window of training steps; a code chosen by no position of any batch of a window is
            restarted at a random encoder output of the window's last batch (0: never).
    """

    def __init__(self, num_codes: int, code_dim: int, update: str = "ema", decay: float = 0.99,
                 epsilon: float = 1e-5, restart_every: int = 100) -> None:
        super().__init__()
        check_sizes(type(self).__name__, num_codes=num_codes, code_dim=code_dim)
        check_sizes(type(self).__name__, 0, restart_every=restart_every)
        if update not in CODEBOOK_UPDATES:
            raise ConfigurationError(f"codebook_update must be one of {', '.join(CODEBOOK_UPDATES)}, got {update!r}")
        if not 0.0 <= decay < 1.0:
            raise ConfigurationError(f"ema_decay must be in [0, 1), got {decay}")
        self.num_codes, self.code_dim, self.update = num_codes, code_dim, update
        self.decay, self.epsilon, self.restart_every = decay, epsilon, restart_every
        initial = torch.randn(num_codes, code_dim)
        if update == "ema":
            self.register_buffer("codebook", initial)
            # Every code starts as if seen once at its initial value: an unused code then stays where it
            # is instead of being divided by a count that decays to zero.
            self.register_buffer("ema_counts", torch.ones(num_codes))
            self.register_buffer("ema_sums", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("window_usage", torch.zeros(num_codes))
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        #: No updates even in training mode (a frozen first stage under a second stage's training).
        self.frozen = False

    # --------------------------------------------------------------------------------- quantization
    @staticmethod
    def flatten(z: Tensor) -> Tensor:
        """``(B, D, h, w)`` -> ``(B*h*w, D)``, positions in raster order within each example."""
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def codes(self, z_e: Tensor) -> Tensor:
        """The code map ``(B, h, w)`` of ``z_e`` ``(B, D, h, w)``."""
        with torch.no_grad():
            flat = self.flatten(z_e.float())
            return nearest_codes(flat, self.codebook.float()).view(z_e.shape[0], *z_e.shape[2:])

    def embed(self, codes: Tensor) -> Tensor:
        """Codebook vectors of a code map ``(B, h, w)`` as ``(B, D, h, w)``."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z_e: Tensor) -> Quantized:
        codes = self.codes(z_e)
        z_q = self.embed(codes).to(z_e.dtype)
        counts = torch.bincount(codes.flatten(), minlength=self.num_codes).float()
        commitment = (z_e - z_q.detach()).pow(2).flatten(1).sum(1)
        codebook_loss = (z_e.detach() - z_q).pow(2).flatten(1).sum(1) if self.update == "loss" else None
        if self.training and not self.frozen:
            with torch.no_grad():
                self.after_step(self.flatten(z_e.detach().float()), codes.flatten(), counts.clone())
        return Quantized(z_e + (z_q - z_e).detach(), codes, commitment, codebook_loss, counts)

    # -------------------------------------------------------------------------------------- updates
    def after_step(self, z: Tensor, codes: Tensor, counts: Tensor) -> None:
        """One training step's codebook bookkeeping: the EMA update, then the restart window."""
        all_ranks_sum(counts)
        if self.update == "ema":
            sums = torch.zeros_like(self.ema_sums).index_add_(0, codes, z)
            self.ema_update(counts, all_ranks_sum(sums))
        self.window_usage += counts
        self.window_steps += 1
        if self.restart_every and int(self.window_steps) >= self.restart_every:
            self.restart(self.window_usage == 0, z)
            self.window_usage.zero_()
            self.window_steps.zero_()

    def ema_update(self, counts: Tensor, sums: Tensor) -> None:
        """The EMA step of the module docstring, from this step's counts n_k and sums of z per code."""
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(self.ema_sums / smoothed_counts(self.ema_counts, self.epsilon)[:, None])

    def restart(self, dead: Tensor, z: Tensor) -> int:
        """Move the ``dead`` codes to distinct random rows of ``z`` (with repeats only when ``z`` has fewer
        rows than dead codes), drawn from the global stream (so a seeded run restarts the same codes at the
        same vectors) and taken from rank 0. Returns how many codes moved."""
        index = dead.nonzero().squeeze(1)
        if index.numel() == 0:
            return 0
        if z.shape[0] >= index.numel():
            rows = torch.randperm(z.shape[0], device=z.device)[: index.numel()]
        else:
            rows = torch.randint(z.shape[0], (index.numel(),), device=z.device)
        new = from_rank_zero(z[rows].contiguous())
        self.codebook.data[index] = new.to(self.codebook.dtype)
        if self.update == "ema":  # as a code seen once at its new place, like the initial codebook
            self.ema_counts[index] = 1.0
            self.ema_sums[index] = new
        return int(index.numel())
