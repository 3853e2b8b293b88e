"""The benchmark scripts still run against the code they measure (a moved output file once broke the atlas
without any test noticing): each at the smallest size, through its own command line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_family_atlas_measures_a_row_and_writes_its_table(tmp_path):
    out = tmp_path / "atlas"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "family_atlas.py"), "--minutes", "0.05",
                           "--num", "8", "--families", "vae", "--nll-batches", "1", "--nll-batch-size", "8",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["family"]: row for row in json.loads((out / "atlas_digits.json").read_text())["rows"]}
    assert set(rows) == {"baseline", "vae"} and not any("error" in row for row in rows.values()), rows
    assert rows["vae"]["metrics"]["fid"]["n_generated"] == 8
    assert rows["vae"]["metrics"]["bpd"]["n"] == 8
    table = (out / "atlas_digits.md").read_text()
    assert "| vae | VAE | ELBO |" in table and (out / "atlas_digits.png").stat().st_size > 0
