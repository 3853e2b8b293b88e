"""The same YAML on more processes and in mixed precision: trainer configs, DDP equivalence, bf16.

Every shipped config runs under 1 process and under 2-process ``ddp`` (Lightning's launcher, one process
per device, as users run it) with its own callbacks, EMA included. The 2-process half runs as one launch of
``tests.scaling_helpers`` that executes all the commands in a row (Python's start-up costs ~5 s a process).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, TINY_FAMILIES, quiet_trainer_args, run_cli
from tests.scaling_helpers import (
    callback_arg,
    callbacks_in,
    config_id,
    launch_env,
    shipped_configs,
    tiny_args,
    write_fake_data,
)

TRAINER_CONFIGS = ROOT / "configs" / "trainer"
DDP_CPU = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
NO_EVAL = ["--evaluation.every_n_epochs=0"]


@pytest.mark.parametrize("name, expected", [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "32-true"}),
    ("ddp", {"accelerator": "gpu", "devices": -1, "strategy": "ddp"}),
    ("bf16", {"precision": "bf16-mixed"}),
    ("multinode", {"accelerator": "gpu", "devices": 4, "num_nodes": 2, "strategy": "ddp"}),
    ("ddp_cpu", {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}),
])
def test_trainer_configs_compose_with_a_model_config(name, expected, capsys):
    """A trainer file changes how the run is executed and nothing else: the model config's EMA callback,
    logger and model survive it."""
    model_config = ROOT / "configs" / "diffusion" / "mnist.yaml"
    assert run_cli(["fit", "--config", str(model_config), "--config", str(TRAINER_CONFIGS / f"{name}.yaml"),
                    "--print_config"]) == 0
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    for key, value in expected.items():
        assert trainer[key] == value, key
    assert any("EMAWeightAveraging" in c["class_path"] for c in trainer["callbacks"])
    assert trainer["logger"]["init_args"]["name"] == "diffusion-mnist"
    assert config["model"]["class_path"] == "lit_gen.models.diffusion.Diffusion"


def test_cpu_and_bf16_trainer_configs_run(tmp_path):
    config, tiny = TINY_FAMILIES["vae"]
    assert run_cli(["fit", "--config", str(config), "--config", str(TRAINER_CONFIGS / "cpu.yaml"),
                    "--config", str(TRAINER_CONFIGS / "bf16.yaml"), *quiet_trainer_args(tmp_path), *tiny,
                    *NO_EVAL, "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_bf16_mixed_fit_for_every_family(tmp_path, family):
    config, tiny = TINY_FAMILIES[family]
    assert run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path), *tiny, *NO_EVAL,
                    "--trainer.precision=bf16-mixed", "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_16_mixed_fit_for_every_family(tmp_path, family):
    """16-mixed = fp16 autocast + a GradScaler. Lightning's ``precision: 16-mixed`` flag is GPU-only, so the
    same plugin is built for the CPU here: the scaled backward, unscaling, skipped steps and (GAN) manual
    optimization all run for real."""
    config, tiny = TINY_FAMILIES[family]
    fp16 = TRAINER_CONFIGS / "fp16_cpu.yaml"
    assert run_cli(["fit", "--config", str(config), "--config", str(fp16), *quiet_trainer_args(tmp_path),
                    *tiny, *NO_EVAL, "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", ["vae", "autoregressive", "flow", "diffusion"])
def test_mixed_precision_nll_matches_float32(family, dtype):
    """Networks may run in bf16 / fp16; likelihood terms and log-dets stay float32/64, so the NLL barely
    moves. (The 16-mixed training path, with its loss scaler, is fitted by test_16_mixed_fit_for_every_family.)

    Weights are perturbed away from their initialisation first: zero-initialised output layers (flows,
    diffusion) would make the comparison trivially exact.
    """
    from lit_gen.cli import LitGenCLI

    config, tiny = TINY_FAMILIES[family]
    cli = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.enable_progress_bar=false"], run=False)
    model, data = cli.model.eval(), cli.datamodule
    x, _ = next(iter(data.val_dataloader()))
    if family == "flow":
        model.loss(x)  # actnorm's data-dependent initialisation
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kwargs = model.eval_nll_kwargs("test")
    torch.manual_seed(0)
    full = model.nll(x, None, **kwargs).nats
    with torch.autocast("cpu", dtype=dtype):
        torch.manual_seed(0)
        mixed = model.nll(x, None, **kwargs).nats
    assert full.dtype == mixed.dtype == torch.float64
    assert torch.isfinite(mixed).all()
    # bf16 has 8 significand bits (0.4% per value); a bf16 sum over the 64 dims would be off by ~0.5 nats.
    relative = ((mixed - full).abs() / full.abs()).mean().item()
    assert relative < 2e-3, relative


def test_one_and_two_processes_report_the_same_metrics(tmp_path):
    """Same checkpoint, test split and seeds: 1 and 2 processes give the same NLL, bpd and FID.

    Under DDP each example of the split is evaluated exactly once, and the FID's sample set is made of
    the same seeded chunks whichever rank draws them. The autoregressive NLL is exact (no Monte Carlo).
    """
    config, tiny = TINY_FAMILIES["autoregressive"]
    # An odd split: Lightning's default DistributedSampler would pad it with a repeated example.
    base = ["--config", str(config), *tiny, "--data.init_args.test_size=301"]
    assert run_cli(["fit", *base, *quiet_trainer_args(tmp_path, "fit"), *NO_EVAL, "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]) == 0
    ckpt = next((tmp_path / "fit").glob("version_*/checkpoints/last.ckpt"))
    evaluation = ["--evaluation.test_num_samples=12", "--evaluation.sample_batch_size=4", "--evaluation.num_real=12",
                  "--evaluation.kid=true", "--evaluation.kid_subset_size=6", "--evaluation.kid_subsets=10",
                  "--evaluation.precision_recall=true", f"--ckpt_path={ckpt}"]
    reports = {}
    for name, devices in (("one", []), ("two", DDP_CPU)):
        assert run_cli(["test", *base, *quiet_trainer_args(tmp_path, name), *evaluation, *devices]) == 0
        reports[name] = json.loads(next((tmp_path / name).glob("version_*/eval/*/metrics.json")).read_text())["metrics"]
    one, two = reports["one"], reports["two"]
    assert one["nll"]["n"] == two["nll"]["n"] == 301
    for key in ("nll", "bpd", "fid", "kid_mean", "precision", "recall"):
        assert two[key]["value"] == pytest.approx(one[key]["value"], rel=1e-5, abs=1e-6), key



def test_gradient_accumulation_and_clipping_from_yaml(tmp_path):
    """Trainer-level: 4 batches accumulated 2 at a time are 2 optimizer steps, with clipping on."""
    config, tiny = TINY_FAMILIES["vae"]
    assert run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path), *tiny, *NO_EVAL,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
                    "--trainer.accumulate_grad_batches=2", "--trainer.gradient_clip_val=0.5"]) == 0
    ckpt = torch.load(next((tmp_path / "test").glob("version_*/checkpoints/last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 2


# ------------------------------------------------------------------ EMA's deep copy of a CLI-built model
@pytest.mark.parametrize("family", ["diffusion", "gan"])
def test_deep_copy_of_a_cli_built_model_shares_its_factories_and_copies_no_data(family):
    """WeightAveraging deep-copies the module. LightningCLI's optimizer / scheduler factories reach the CLI,
    its datamodule and trainer; under ``ddp`` that includes the launcher's process handles, whose locks
    cannot be copied ("cannot pickle '_thread.lock' object" on rank 0). A lock on the datamodule stands
    for them here."""
    from lit_gen.cli import LitGenCLI

    config, tiny = TINY_FAMILIES[family]
    cli = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.enable_progress_bar=false"], run=False)
    model = cli.model
    cli.datamodule.process_handles_lock = threading.Lock()
    factories = [getattr(model, name) for name in model.factory_attributes]
    factory = next(f for f in factories if f is not None)
    with pytest.raises(TypeError, match="lock"):
        copy.deepcopy(factory)  # the factory reaches the lock: what copying the model used to hit
    memo: dict = {}
    copied = copy.deepcopy(model, memo)
    for name in model.factory_attributes:
        assert getattr(copied, name) is getattr(model, name), name
    assert all(id(obj) not in memo for obj in (cli, cli.datamodule, cli.trainer))
    for (key, a), (_, b) in zip(model.state_dict().items(), copied.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), key


# ------------------------------------------------------------------ every shipped config, 1 and 2 processes
CONFIGS = shipped_configs()
DDP_CPU_CONFIG = str(TRAINER_CONFIGS / "ddp_cpu.yaml")
EMA = "lit_gen.averaging.EMAWeightAveraging"
EMA_CONFIG = ROOT / "configs" / "diffusion" / "digits.yaml"
# 104 steps: the config's EMA starts at step 100 (a copy), then averages 3 more steps into it.
EMA_STEPS = ["--trainer.limit_train_batches=104"]
EMA_EVALUATION = ["--evaluation.test_num_samples=8", "--evaluation.num_real=8", "--evaluation.fid=true"]


def run_args(root: Path, name: str) -> list[str]:
    """Logger, checkpoints and Lightning's own files of run ``name``, all under ``root/name``."""
    return [f"--trainer.logger.init_args.save_dir={root / name}", "--trainer.logger.init_args.name=run",
            f"--trainer.default_root_dir={root / name}"]


def slug(config: Path) -> str:
    return config_id(config).replace("/", "-")


def two_process_commands(root: Path, data: Path) -> list[dict]:
    """The 2-process ddp half: for every config fit (each rank dumps its weights), validate, test and
    predict from the fit's checkpoint; first the EMA config, longer, with FID at test."""
    commands = []
    cases = [("ema", EMA_CONFIG, EMA_STEPS, EMA_EVALUATION)]
    # test without samples: predict draws them (a PixelCNN's CIFAR-10 sample costs 3072 network passes)
    no_samples = ["--evaluation.fid=false", "--evaluation.grid_size=0"]
    cases += [(slug(config), config, [], no_samples) for config in CONFIGS]
    for name, config, fit_extra, test_extra in cases:
        common = ["--config", str(config), "--config", DDP_CPU_CONFIG, *tiny_args(config, data),
                  *run_args(root, name)]
        dump = callback_arg("tests.scaling_helpers.RankDump", directory=str(root / name / "ranks"))
        commands += [
            {"name": f"{name}.fit", "args": ["fit", *common, *fit_extra, dump]},
            {"name": f"{name}.validate", "args": ["validate", *common, "--ckpt_path=last"]},
            {"name": f"{name}.test", "args": ["test", *common, *test_extra, "--ckpt_path=last"]},
            {"name": f"{name}.predict", "args": ["predict", *common, "--ckpt_path=last",
                                                 f"--prediction.output_dir={root / name / 'predict'}"]},
        ]
    # 3 samples in chunks of 4: one chunk for two processes, which Lightning would refuse as such
    quickstart = ROOT / "configs" / "quickstart.yaml"
    commands.append({"name": "quickstart.predict-3", "args": [
        "predict", "--config", str(quickstart), "--config", DDP_CPU_CONFIG, *tiny_args(quickstart, data),
        *run_args(root, "quickstart"), "--ckpt_path=last", "--data.init_args.predict_num_samples=3",
        f"--prediction.output_dir={root / 'quickstart' / 'predict-3'}"]})
    return commands


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    return write_fake_data(tmp_path_factory.mktemp("fake_data"))


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, fake_data) -> Path:
    """One launch of every 2-process command (see two_process_commands); ``<root>/results`` holds each
    command's exit code per rank."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "commands.json").write_text(json.dumps(two_process_commands(root, fake_data)))
    proc = subprocess.run([sys.executable, "-m", "tests.scaling_helpers", str(root / "commands.json"),
                           str(root / "results")], cwd=root, env=launch_env(), capture_output=True, text=True,
                          timeout=900, check=False)
    (root / "output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def command_results(root: Path, name: str) -> list[dict]:
    """Both ranks' records of a command, each asserted to have succeeded."""
    records = [json.loads(p.read_text()) for p in sorted((root / "results").glob(f"{name}.rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1], f"{name}: run by ranks {[r['rank'] for r in records]}"
    for record in records:
        why = record["error"] or record["code"]
        assert record["code"] == 0, f"{name} failed on rank {record['rank']}: {why}"
    return records


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: keys differ"
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{what}: {key} differs"


def samples(directory: Path) -> np.ndarray:
    return np.load(directory / "samples.npz")["samples"]


@pytest.fixture
def one_thread():
    """One torch thread, as each launched process has: the same kernels give the same sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-process-ddp"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_config_fits_validates_tests_and_predicts(config, processes, two_process_runs, fake_data,
                                                        tmp_path, one_thread):
    """A couple of steps of each shipped config with its own callbacks. Under 2-process ddp: both ranks
    end with the same raw and averaged weights, which are the checkpoint's; validate, test (every test
    example once, across both ranks) and predict run from it. In one process: the same fit; the 2-process
    checkpoint's samples, drawn again in one process, are the 2-process ones: seeded per sample, in the
    same chunks (one per rank there), bit for bit."""
    root, name = two_process_runs, slug(config)
    ranks = [load(root / name / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    ddp_ckpt = load(root / name / "run" / "version_0" / "checkpoints" / "last.ckpt")
    averaging = [c for c in callbacks_in(config) if c == EMA]
    if processes == 2:
        for command in ("fit", "validate", "test", "predict"):
            command_results(root, f"{name}.{command}")
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert_same_tensors(ranks[0]["raw"], ranks[1]["raw"], "raw weights of rank 0 and 1")
        assert len(ranks[0]["averaged"]) == len(ranks[1]["averaged"]) == len(averaging)  # its EMA ran
        for avg0, avg1 in zip(ranks[0]["averaged"], ranks[1]["averaged"]):
            assert_same_tensors(avg0, avg1, "averaged weights of rank 0 and 1")
        assert ddp_ckpt["global_step"] == ranks[0]["global_step"] > 0
        if averaging:
            assert_same_tensors(ddp_ckpt["current_model_state"], ranks[0]["raw"], "checkpoint's raw weights")
            assert_same_tensors(ddp_ckpt["state_dict"], ranks[0]["averaged"][0], "checkpoint's average")
        else:
            assert_same_tensors(ddp_ckpt["state_dict"], ranks[0]["raw"], "checkpoint's weights")
        report = json.loads(next((root / name / "run").glob("version_*/eval/*/metrics.json")).read_text())
        assert report["metrics"]["loss"]["n"] == 8  # one batch of 4 on each rank, no example twice
        assert samples(root / name / "predict").shape[0] == 8
        return
    own = tmp_path / "one"
    common = ["--config", str(config), *tiny_args(config, fake_data), "--trainer.accelerator=cpu",
              "--trainer.devices=1"]
    assert run_cli(["fit", *common, *run_args(own, name)]) == 0
    ckpt = load(own / name / "run" / "version_0" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == ddp_ckpt["global_step"]  # as many batches per process
    assert ("current_model_state" in ckpt) == bool(averaging)  # the config's EMA swapped in its average
    ddp_ckpt_path = root / name / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert run_cli(["predict", *common, *run_args(own, "predict"), f"--ckpt_path={ddp_ckpt_path}",
                    f"--prediction.output_dir={own / 'predict'}"]) == 0
    np.testing.assert_array_equal(samples(own / "predict"), samples(root / name / "predict"))


def test_two_process_ema_fit_keeps_ranks_identical_and_evaluation_uses_the_average(
        two_process_runs, fake_data, tmp_path, one_thread):
    """The issue's run: configs/diffusion/digits.yaml under 2-process ddp with its EMA, past the step at
    which the EMA starts. Both ranks hold the same raw and the same averaged weights at the end; the
    checkpoint's weights are the average; the 2-process FID and samples are those a 1-process test and
    predict compute from that checkpoint, and not what the raw weights give."""
    root = two_process_runs
    for command in ("fit", "validate", "test", "predict"):
        command_results(root, f"ema.{command}")
    ranks = [load(root / "ema" / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["global_step"] == 104
    assert_same_tensors(ranks[0]["raw"], ranks[1]["raw"], "raw weights of rank 0 and 1")
    assert_same_tensors(ranks[0]["averaged"][0], ranks[1]["averaged"][0], "averaged weights of rank 0 and 1")
    raw, averaged = ranks[0]["raw"], ranks[0]["averaged"][0]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw), "the average is the raw model"
    ckpt_path = root / "ema" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = load(ckpt_path)
    assert_same_tensors(ckpt["state_dict"], averaged, "checkpoint's weights")
    assert_same_tensors(ckpt["current_model_state"], raw, "checkpoint's raw weights")

    common = ["--config", str(EMA_CONFIG), *tiny_args(EMA_CONFIG, fake_data), "--trainer.accelerator=cpu",
              "--trainer.devices=1"]
    one_run = run_args(tmp_path, "one")
    assert run_cli(["test", *common, *EMA_EVALUATION, *one_run, f"--ckpt_path={ckpt_path}"]) == 0
    one = json.loads(next((tmp_path / "one").glob("run/version_*/eval/*/metrics.json")).read_text())["metrics"]
    two = json.loads(next((root / "ema" / "run").glob("version_*/eval/*/metrics.json")).read_text())["metrics"]
    assert one["fid"]["n_generated"] == two["fid"]["n_generated"] == 8
    assert two["fid"]["value"] == pytest.approx(one["fid"]["value"], rel=1e-5)

    assert run_cli(["predict", *common, *run_args(tmp_path, "one"), f"--ckpt_path={ckpt_path}",
                    f"--prediction.output_dir={tmp_path / 'averaged'}"]) == 0
    np.testing.assert_array_equal(samples(tmp_path / "averaged"), samples(root / "ema" / "predict"))
    raw_only = {k: v for k, v in ckpt.items() if k not in ("current_model_state", "averaging_state")}
    torch.save({**raw_only, "state_dict": raw}, tmp_path / "raw.ckpt")
    assert run_cli(["predict", *common, *run_args(tmp_path, "one"), f"--ckpt_path={tmp_path / 'raw.ckpt'}",
                    f"--prediction.output_dir={tmp_path / 'raw'}"]) == 0
    assert np.abs(samples(tmp_path / "raw") - samples(root / "ema" / "predict")).max() > 1e-3


def test_two_process_predict_of_fewer_chunks_than_processes(two_process_runs, fake_data, tmp_path,
                                                            one_thread):
    """3 samples with eval_batch_size 4 under 2 processes: the request is cut so that each rank draws a
    chunk, and the samples are those of one process drawing one chunk of 3 (each sample has its seed)."""
    root = two_process_runs
    command_results(root, "quickstart.predict-3")
    quickstart = ROOT / "configs" / "quickstart.yaml"
    ckpt_path = root / "quickstart" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert run_cli(["predict", "--config", str(quickstart), *tiny_args(quickstart, fake_data),
                    "--trainer.accelerator=cpu", *run_args(tmp_path, "one"), f"--ckpt_path={ckpt_path}",
                    "--data.init_args.predict_num_samples=3",
                    f"--prediction.output_dir={tmp_path / 'one'}"]) == 0
    two = samples(root / "quickstart" / "predict-3")
    assert two.shape[0] == 3
    np.testing.assert_allclose(two, samples(tmp_path / "one"), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ ddp_spawn
LIGHTNING_EMA = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging
"""


def test_ddp_spawn_runs_lit_gens_ema_and_refuses_lightnings_own_in_one_line(tmp_path, capsys):
    """ddp_spawn pickles the trainer into its processes: lit-gen's EMAWeightAveraging (every shipped EMA
    config's) can be pickled and the run fits; Lightning's own holds a local function and cannot, which is
    refused before any process starts, pointing to ddp."""
    config, tiny = TINY_FAMILIES["diffusion"]
    steps = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--evaluation.every_n_epochs=0"]
    assert run_cli(["fit", "--config", str(config), *tiny, *quiet_trainer_args(tmp_path / "ours"), *DDP_CPU,
                    *steps]) == 0
    assert list((tmp_path / "ours").rglob("last.ckpt"))
    capsys.readouterr()
    lightning_ema = tmp_path / "lightning_ema.yaml"
    lightning_ema.write_text(LIGHTNING_EMA)
    code = run_cli(["fit", "--config", str(config), "--config", str(lightning_ema), *tiny,
                    *quiet_trainer_args(tmp_path / "theirs"), *DDP_CPU, *steps])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(lines) == 1 and "EMAWeightAveraging cannot be pickled" in lines[0]
    assert "--trainer.strategy=ddp" in lines[0] and "Traceback" not in err
    assert not list((tmp_path / "theirs").rglob("*.ckpt"))
