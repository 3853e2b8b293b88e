"""Reports: ``metrics.json``, the terminal table and the sweep's table and plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lit_gen import __version__
from lit_gen.core.records import MetricRecord
from lit_gen.core.runtime import qualified_name


def metrics_from_records(records: list[MetricRecord]) -> dict[str, dict[str, Any]]:
    """``metrics.json``'s ``metrics``: each record's entry by its name, in the order they were made."""
    metrics: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.name in metrics:
            raise ValueError(f"two records of {record.name!r} for split {record.split!r}")
        metrics[record.name] = record.as_dict()
    return metrics


def collect_metrics(trainer: Any, pl_module: Any, records: list[MetricRecord], split: str = "test",
                    sweep: list[dict[str, Any]] | None = None, knob: str | None = None) -> dict[str, Any]:
    """Everything one ``test`` / ``validate`` measured (the model's and the callback's records, the sweep's
    rows) and what produced it."""
    datamodule = trainer.datamodule
    report = {
        "model": qualified_name(pl_module),
        "datamodule": getattr(datamodule, "name", type(datamodule).__name__ if datamodule else None),
        "split": split,
        "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
        "sample_kwargs": dict(getattr(pl_module, "sample_kwargs", {})),
        "lit_gen_version": __version__,
        "metrics": metrics_from_records(records),
    }
    if sweep:
        report["sweep"] = {"knob": knob, "rows": sweep}
    return report


def write_metrics_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically, so an interrupted test never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def print_metrics_table(report: dict[str, Any], records: list[MetricRecord]) -> None:
    """A short rich table of the records: metric, value with its unit, kind (or what was compared), N."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['model'].rsplit('.', 1)[-1]} on {report['datamodule']} ({report['split']})")
    for column in ("metric", "value", "kind", "N"):
        table.add_column(column, justify="right" if column in ("value", "N") else "left")
    for record in records:
        unit = f" {record.unit}" if record.unit else ""
        count = record.count
        table.add_row(record.name, format_value(record.value) + unit, record.describe(),
                      "" if count is None else format_value(count))
    Console().print(table)


def print_sweep_table(rows: list[dict[str, Any]], knob: str) -> None:
    """The sweep's rows as a rich table: the knob's value and each sample metric."""
    from rich.console import Console
    from rich.table import Table

    columns = [m for m in SWEEP_METRICS if m in rows[0]]
    table = Table(title=f"{knob} sweep (N = {rows[0]['n_generated']} generated vs {rows[0]['n_real']} real)")
    for column in (knob, *columns):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(format_value(row[c]) for c in (knob, *columns)))
    Console().print(table)


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


SWEEP_METRICS = ("fid", "kid_mean", "precision", "recall", "sample_sec_per_image", "sample_nfe")


def write_sweep(rows: list[dict[str, Any]], knob: str, report: dict[str, Any], directory: Path) -> list[Path]:
    """``sweep.md`` (a table) and ``sweep.png`` (FID and precision/recall against the knob)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [knob] + [m for m in SWEEP_METRICS if m in rows[0]]
    first = rows[0]
    lines = [f"# {report['model'].rsplit('.', 1)[-1]} on {report['datamodule']}: {knob} sweep", "",
             f"N = {first['n_generated']} generated vs {first['n_real']} real images, checkpoint "
             f"{report['checkpoint']}, seed {report['seed']}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row[c]) for c in columns) + " |")
    table = directory / "sweep.md"
    table.write_text("\n".join(lines) + "\n")

    labels = [format_value(row[knob]) for row in rows]
    positions = range(len(rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(positions, [row["fid"] for row in rows], "o-", color="tab:red")
    left.set_ylabel("FID (lower is better)")
    for name, color in (("precision", "tab:blue"), ("recall", "tab:green")):
        right.plot(positions, [row[name] for row in rows], "o-", color=color, label=name)
    right.set_ylim(-0.02, 1.02)
    right.legend()
    for axis in (left, right):
        axis.set_xticks(list(positions), labels)
        axis.set_xlabel(knob)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{report['model'].rsplit('.', 1)[-1]}: {knob} vs quality (N = {first['n_generated']})")
    figure.tight_layout()
    plot = directory / "sweep.png"
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    return [table, plot]
