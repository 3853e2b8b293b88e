"""The docs' worked example is real code: it trains and evaluates through the CLI."""

from __future__ import annotations

import re
import sys

import torch

from tests.conftest import ROOT, quiet_trainer_args, run_cli


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_adding_a_family_example_runs_through_the_cli(tmp_path, monkeypatch):
    source = python_blocks((ROOT / "docs" / "adding-a-family.md").read_text())[0]
    (tmp_path / "docs_family_example.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from docs_family_example import FactorizedLogistic

    model = FactorizedLogistic(data_shape=(1, 8, 8), num_levels=17)
    x = torch.randint(0, 17, (4, 1, 8, 8)) / 16
    out = model.nll(x)
    assert out.kind == "exact" and out.nats.shape == (4,)
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)

    code = run_cli(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *quiet_trainer_args(tmp_path),
                    "--model=docs_family_example.FactorizedLogistic", "--trainer.fast_dev_run=true",
                    "--evaluation.fid=false"])
    assert code == 0
    sys.modules.pop("docs_family_example", None)
