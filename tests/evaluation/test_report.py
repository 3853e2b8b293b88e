"""Reports: records -> metrics.json entries and the terminal table, sweeps."""

import json

import pytest

from lit_gen.core.records import BITS_PER_DIM, NATS, Comparison, MetricRecord, not_available
from lit_gen.evaluation import report


def _records():
    compared = Comparison(n_generated=12, n_real=20, real_split="train", feature_extractor="inception-x", seed=3)
    return [
        MetricRecord("nll", 91.5, "test", unit=NATS, kind="bound", n=64),
        MetricRecord("bpd", 2.06, "test", unit=BITS_PER_DIM, kind="bound", n=64),
        MetricRecord("loss", 0.25, "test", n=64),
        MetricRecord("fid", 12.0, "test", compared=compared),
        MetricRecord("sample_sec_per_image", 0.01, "test", unit="s", n_generated=64),
    ]


def test_metrics_json_entries_come_from_the_records_alone():
    metrics = report.metrics_from_records(_records())
    assert list(metrics) == ["nll", "bpd", "loss", "fid", "sample_sec_per_image"]
    assert metrics["nll"] == {"value": 91.5, "split": "test", "kind": "bound", "n": 64, "unit": "nats"}
    assert metrics["bpd"]["unit"] == "bits/dim" and metrics["loss"] == {"value": 0.25, "split": "test", "n": 64}
    assert metrics["fid"] == {"value": 12.0, "split": "test", "n_generated": 12, "n_real": 20,
                              "real_split": "train", "feature_extractor": "inception-x", "seed": 3}
    assert metrics["sample_sec_per_image"]["n_generated"] == 64


def test_a_metric_named_like_a_unit_gets_no_unit_it_was_not_given():
    """No suffix guessing: a term called ``*_nats`` or ``*bpd`` is unitless unless its record says so."""
    metrics = report.metrics_from_records([MetricRecord("recon_nats", 1.0, "test", n=4),
                                           MetricRecord("weird_bpd", 2.0, "test", n=4)])
    assert "unit" not in metrics["recon_nats"] and "unit" not in metrics["weird_bpd"]


def test_two_records_of_one_name_are_an_error():
    with pytest.raises(ValueError, match="fid"):
        report.metrics_from_records([MetricRecord("fid", 1.0, "test"), MetricRecord("fid", 2.0, "test")])


def test_not_available_says_why_and_has_no_number():
    entry = not_available("test", "GAN").as_dict()
    assert entry["value"] is None and entry["kind"] == "not available" and "GAN" in entry["why"]


def test_table_has_one_row_per_record_with_kind_or_comparison(capsys):
    rep = {"model": "lit_gen.models.vae.VAE", "datamodule": "digits", "split": "test",
           "metrics": report.metrics_from_records(_records())}
    report.print_metrics_table(rep, _records())
    out = capsys.readouterr().out
    assert "VAE on digits (test)" in out
    for text in ("91.5 nats", "2.06 bits/dim", "bound", "20 real (train) vs generated", "0.01 s"):
        assert text in out, text
    assert out.count("\n") >= len(_records())


def test_metrics_json_is_written_whole(tmp_path):
    path = report.write_metrics_json({"metrics": {"nll": {"value": 1.0}}}, tmp_path / "a" / "metrics.json")
    assert json.loads(path.read_text()) == {"metrics": {"nll": {"value": 1.0}}}
    assert not list(path.parent.glob("*.tmp"))


def test_format_value():
    assert report.format_value(None) == "n/a" and report.format_value(0.123456) == "0.1235"
    assert report.format_value(123456.7) == "123456.7" and report.format_value(5) == "5"


def test_sweep_writes_a_table_and_a_plot(tmp_path):
    rows = [{"temperature": t, "fid": 10.0 - t, "precision": 0.5, "recall": 0.4, "sample_sec_per_image": 0.1,
             "n_generated": 8, "n_real": 8} for t in (0.5, 1.0)]
    rep = {"model": "a.B", "datamodule": "digits", "checkpoint": "x.ckpt", "seed": 0}
    table, plot = report.write_sweep(rows, "temperature", rep, tmp_path)
    lines = table.read_text().splitlines()
    assert "| temperature | fid | precision | recall | sample_sec_per_image |" in lines
    assert "| 0.5 | 9.5 | 0.5 | 0.4 | 0.1 |" in lines and plot.stat().st_size > 0
