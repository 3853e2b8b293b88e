"""The docs' worked example is real code: it trains and evaluates through the CLI."""

from __future__ import annotations

import re
import shlex
import sys

import pytest
import torch

from lit_gen.command import packaged_config
from lit_gen.evaluation.standalone import build_parser as build_evaluate_parser
from tests.conftest import ROOT, quiet_trainer_args, run_cli


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown, flags=re.S)


def test_adding_a_family_example_runs_through_the_cli(tmp_path, monkeypatch):
    """The page followed literally: its file as a new folder of ``lit_gen.models``, its config as written,
    and no other change (the folder is found without a registry)."""
    page = (ROOT / "docs" / "adding-a-family.md").read_text()
    family = tmp_path / "models" / "factorized_logistic"
    family.mkdir(parents=True)
    (family / "__init__.py").write_text(python_blocks(page)[0])
    config = tmp_path / "configs" / "factorized_logistic" / "digits.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml_blocks(page)[0])
    import lit_gen.models

    monkeypatch.setattr(lit_gen.models, "__path__", [*lit_gen.models.__path__, str(tmp_path / "models")])
    try:
        assert "lit_gen.models.factorized_logistic" in lit_gen.models.family_modules()
        from lit_gen.models.factorized_logistic import FactorizedLogistic

        model = FactorizedLogistic(data_shape=(1, 8, 8), num_levels=17)
        x = torch.randint(0, 17, (4, 1, 8, 8)) / 16
        out = model.nll(x)
        assert out.kind == "exact" and out.nats.shape == (4,)
        assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)

        code = run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path),
                        "--trainer.fast_dev_run=true", "--evaluation.fid=false"])
        assert code == 0
    finally:
        sys.modules.pop("lit_gen.models.factorized_logistic", None)


# ------------------------------------------------------------------ every command line in the docs
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs").glob("*/*.md"))]
TINY_RUN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
            "--evaluation.every_n_epochs=0", "--evaluation.test_num_samples=4", "--evaluation.sample_batch_size=4",
            "--data.init_args.predict_num_samples=4"]
RUNNABLE_HERE = ("quickstart.yaml", "digits.yaml", "trainer/cpu.yaml", "trainer/bf16.yaml", "trainer/fp16_cpu.yaml",
                 "evaluation/against_test.yaml")


def command_lines(markdown: str) -> list[str]:
    """``lit-gen`` lines of fenced shell blocks and indented code, continuation lines joined."""
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M)
    code = [body for lang, body in fenced if lang in ("", "bash", "sh", "shell")]
    code += ["\n".join(re.findall(r"^    (.*)$", markdown, flags=re.M))]
    lines = []
    for block in code:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("lit-gen ") and "<" not in line and "factorized_logistic" not in line:
                lines.append(line)
    return lines


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_runs(doc, tmp_path, monkeypatch):
    """Each line parses with its configs as written; lines on the bundled digits run (on a tiny budget)
    in order, so `--ckpt_path last` finds the fit above it. Others (MNIST files, GPUs) are parse-checked."""
    monkeypatch.chdir(ROOT)
    fitted: set[str] = set()
    for line in command_lines(doc.read_text()):
        args = shlex.split(line)[1:]
        if args[0] == "evaluate":
            # Not a LightningCLI subcommand: its own argparse parser, and its config specs must exist.
            parsed = build_evaluate_parser().parse_args(args[1:])
            for spec in parsed.inputs:
                if spec.startswith("data:"):
                    assert (ROOT / spec.split(":")[1]).is_file(), f"{doc.name}: {spec} does not exist ({line})"
            continue
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        for config in configs:
            resolved = config if (ROOT / config).is_file() else packaged_config(config)
            assert resolved is not None, f"{doc.name}: {config} does not exist ({line})"
        configs = [str(c if (ROOT / c).is_file() else packaged_config(c)) for c in configs]
        if "--print_config" in args:
            assert run_cli(args) == 0, f"{doc.name}: does not parse: {line}"
            continue
        runnable = configs and all(c.endswith(RUNNABLE_HERE) for c in configs)
        if not runnable:
            assert run_cli([*args, "--print_config"]) == 0, f"{doc.name}: does not parse: {line}"
            continue
        out = ["--trainer.logger.init_args.save_dir=" + str(tmp_path / "runs")]
        if args[0] == "fit":
            fitted.add(configs[0])
        elif ("last" in args or "best" in args) and configs[0] not in fitted:
            # A page that starts from a checkpoint: make the run its line expects.
            assert run_cli(["fit", "--config", configs[0], *TINY_RUN, *out]) == 0
            fitted.add(configs[0])
        if args[0] == "predict":
            out.append(f"--prediction.output_dir={tmp_path / 'predictions'}")
        assert run_cli([*args, *TINY_RUN, *out]) == 0, f"{doc.name}: failed: {line}"
