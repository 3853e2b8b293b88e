"""Metric records: each evaluation number with its unit, kind, N and what it compared, typed where it is made.

A family's split means (loss terms, NLL, bits/dim) and the evaluation callback's sample metrics (FID, KID,
precision/recall, seconds per image) are both made as :class:`MetricRecord`; ``metrics.json``, the terminal
table and the logger read the records, so nothing downstream guesses a unit from a metric's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Units of the numbers lit-gen reports ("" for unitless scores).
NATS, BITS_PER_DIM, SECONDS = "nats", "bits/dim", "s"
#: The kind of the NLL record of a family without a tractable likelihood (the others: exact, bound, estimate).
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class Comparison:
    """What a sample metric compared: ``n_generated`` samples against ``n_real`` images of ``real_split``."""

    n_generated: int
    n_real: int
    real_split: str
    feature_extractor: str
    seed: int

    def describe(self) -> str:
        return f"{self.n_real} real ({self.real_split}) vs generated"


@dataclass(frozen=True)
class MetricRecord:
    """One number of one split.

    Args:
        name: the metric's name within its split (``nll``, ``bpd``, ``elbo``, ``fid``, ``loss``, ...).
        value: the number, or None where the model cannot give one (``why`` says so).
        split: ``train``, ``val``, ``test`` (or a sweep's ``sweep_<knob>_<value>``).
        unit: :data:`NATS`, :data:`BITS_PER_DIM`, :data:`SECONDS` or ``""``.
        kind: a likelihood's kind (exact, bound, estimate or :data:`NOT_AVAILABLE`); None for other metrics.
        n: the number of examples the value averages over (None for sample metrics: see ``compared``).
        compared: for sample metrics, the generated and real sets behind the number.
        n_generated: samples behind a timing (without a real set).
        why: for a value of None, the reason.
    """

    name: str
    value: float | None
    split: str
    unit: str = ""
    kind: str | None = None
    n: int | None = None
    compared: Comparison | None = None
    n_generated: int | None = None
    why: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<split>/<name>``, the name it is logged under."""
        return f"{self.split}/{self.name}"

    def as_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` entry: value and split, then whatever of unit, kind, N and comparison is set."""
        entry: dict[str, Any] = {"value": self.value, "split": self.split}
        if self.kind is not None:
            entry["kind"] = self.kind
        if self.n is not None:
            entry["n"] = self.n
        if self.compared is not None:
            entry.update(dataclasses.asdict(self.compared))
        elif self.n_generated is not None:
            entry["n_generated"] = self.n_generated
        if self.unit:
            entry["unit"] = self.unit
        if self.why is not None:
            entry["why"] = self.why
        entry.update(self.extra)
        return entry

    def describe(self) -> str:
        """The terminal table's "kind" column: the likelihood's kind or what a sample metric compared."""
        if self.compared is not None:
            return self.compared.describe()
        return self.kind or ""

    @property
    def count(self) -> int | None:
        """The table's N: examples averaged, or samples generated."""
        if self.n is not None:
            return self.n
        if self.compared is not None:
            return self.compared.n_generated
        return self.n_generated


def not_available(split: str, owner: str) -> MetricRecord:
    """The NLL record of a family without a tractable likelihood: said plainly, never a made-up number."""
    return MetricRecord("nll", None, split, kind=NOT_AVAILABLE, why=f"{owner} has no tractable likelihood")
