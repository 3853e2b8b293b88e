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


def test_the_latent_benchmark_trains_both_stages_of_an_arm_and_compares_it_with_its_pixel_arm(tmp_path):
    script = str(ROOT / "benchmarks" / "latent_models.py")
    runs = tmp_path / "runs"
    for arm in ("pixel-diffusion", "latent-diffusion"):
        done = subprocess.run([sys.executable, script, "train", "--arm", arm, "--data", "digits", "--minutes", "0.03",
                               "--run-dir", str(runs)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((runs / "latent-diffusion" / "train.json").read_text())
    assert [s["model"] for s in record["stages"]] == ["Autoencoder", "LatentDiffusion"] and record["peak_rss_gib"] > 0
    done = subprocess.run([sys.executable, script, "evaluate", "--data", "digits", "--run-dir", str(runs),
                           "--num-samples", "8", "--num-test", "8", "--batch-size", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| latent-diffusion | Autoencoder" in done.stdout and "| pixel-diffusion | Diffusion" in done.stdout
    assert "latent-diffusion vs pixel-diffusion: sampling" in done.stdout
