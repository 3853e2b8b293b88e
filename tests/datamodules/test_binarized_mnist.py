"""Binarized MNIST: dynamic training images re-drawn at every read over a fixed test set, the static files
read back exactly, the factorized baseline equal to a histogram, and every config through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lit_gen.datamodules import BinarizedMNISTDataModule
from lit_gen.datamodules.binarized_mnist import read_amat
from lit_gen.errors import DataNotFoundError, LitGenError
from lit_gen.models.factorized import FactorizedCategorical
from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set


def dynamic(root, **kwargs) -> BinarizedMNISTDataModule:
    return BinarizedMNISTDataModule(root=str(root), val_size=4, **kwargs)


def test_dynamic_training_images_are_redrawn_and_the_test_set_is_fixed(tmp_path):
    arrays = make_idx_set(tmp_path, n_train=20, n_test=7)
    data = dynamic(tmp_path)
    assert (data.name, data.num_levels, data.num_classes, data.data_shape) == \
        ("binarized_mnist-dynamic", 2, 10, (1, 28, 28))
    train = data.split_dataset("train")
    first, second = train[0][0], train[0][0]
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second), "two reads (two epochs) see two binary images of one digit"
    # Only where the digit has ink can a pixel be 1; where it is saturated it always is.
    index = train.indices[0]
    intensity = torch.from_numpy(arrays["train-images-idx3-ubyte"][index]).float() / 255
    draws = torch.stack([train[0][0][0] for _ in range(400)])
    assert (draws[:, intensity == 0] == 0).all() and (draws[:, intensity == 1] == 1).all()
    assert torch.allclose(draws.mean(0), intensity, atol=0.12)

    again = dynamic(tmp_path)  # another run, another global seed
    torch.manual_seed(123)
    for split in ("val", "test"):
        a, b = data.split_dataset(split), again.split_dataset(split)
        assert torch.equal(torch.stack([a[i][0] for i in range(len(a))]),
                           torch.stack([b[i][0] for i in range(len(b))])), split
    assert len(data.split_dataset("test")) == 7 and len(data.split_dataset("val")) == 4


def amat(path, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(int(v)) for v in image.flatten()) + "\n" for image in images))


def static_files(root, sizes=(12, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    images = {split: (rng.random((n, 784)) < 0.3).astype(np.uint8) for split, n in zip(("train", "val", "test"), sizes)}
    names = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
             "test": "binarized_mnist_test.amat"}
    for split, array in images.items():
        amat(root / names[split], array)
    return images


def test_static_files_round_trip(tmp_path):
    images = static_files(tmp_path / "binarized_mnist")
    data = BinarizedMNISTDataModule(root=str(tmp_path), protocol="static")
    assert data.name == "binarized_mnist-static" and data.num_classes is None
    for split, array in images.items():
        dataset = data.split_dataset(split)
        read = torch.stack([dataset[i][0] for i in range(len(dataset))])
        assert np.array_equal(read.view(len(dataset), -1).numpy(), array.astype(np.float32)), split


def test_static_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="binarized_mnist_train.amat"):
        BinarizedMNISTDataModule(root=str(tmp_path), protocol="static").split_dataset("train")
    bad = tmp_path / "bad.amat"
    bad.write_text("0 1 1\n")
    with pytest.raises(LitGenError, match="784 values"):
        read_amat(bad)
    bad.write_text("0 2 " * 392 + "\n")
    with pytest.raises(LitGenError, match="other than 0, 1"):
        read_amat(bad)
    with pytest.raises(LitGenError, match="protocol"):
        BinarizedMNISTDataModule(root=str(tmp_path), protocol="fixed")


def test_the_factorized_baseline_equals_a_numpy_histogram(tmp_path):
    images = static_files(tmp_path, sizes=(40, 5, 9))
    data = BinarizedMNISTDataModule(root=str(tmp_path), protocol="static")
    model = FactorizedCategorical(data_shape=(1, 28, 28), num_levels=2)
    train = data.split_dataset("train")
    model.fit_counts([torch.stack([train[i][0] for i in range(len(train))])], smoothing=1.0)
    test = data.split_dataset("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    ones = images["train"].sum(0)  # an independent histogram: P(pixel = 1) with add-one smoothing
    p_one = (ones + 1.0) / (len(images["train"]) + 2.0)
    t = images["test"]
    expected = -(t * np.log(p_one) + (1 - t) * np.log(1 - p_one)).sum(1)
    with torch.no_grad():
        nats = model.nll(x).nats.double().numpy()
    assert np.allclose(nats, expected, rtol=1e-6)


@pytest.mark.parametrize("config", ["vae/binarized_mnist.yaml", "autoregressive/binarized_mnist.yaml",
                                    "autoregressive/made_binarized_mnist.yaml"])
def test_fast_dev_run_of_every_binarized_config(tmp_path, config):
    make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
    small = {"vae": ["--model.init_args.channels=8", "--model.init_args.latent_dim=4",
                     "--model.init_args.iwae_samples=20"],
             "autoregressive": ["--model.init_args.channels=8", "--model.init_args.num_layers=2",
                                "--model.init_args.head_channels=8"] if "made" not in config else
             ["--model.init_args.hidden_sizes=[16]"]}[config.split("/")[0]]
    assert run_cli(["fit", "--config", str(ROOT / "configs" / config), *quiet_trainer_args(tmp_path), *small,
                    f"--data.init_args.root={tmp_path / 'idx'}", "--data.init_args.val_size=4",
                    "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
                    "--trainer.fast_dev_run=true", "--evaluation.fid=false"]) == 0


def test_vae_test_reports_nats_per_image_with_the_protocol(tmp_path):
    """fit then test: metrics.json names the protocol (the datamodule) and the NLL is in nats per binary image
    (between 0 and a few times the 784 ln 2 of a coin per pixel), with the ELBO beside it."""
    make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
    args = ["--config", str(ROOT / "configs" / "vae" / "binarized_mnist.yaml"), *quiet_trainer_args(tmp_path, "bin"),
            "--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=50",
            f"--data.init_args.root={tmp_path / 'idx'}", "--data.init_args.val_size=4",
            "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4"]
    assert run_cli(["fit", *args, "--trainer.max_epochs=1", "--evaluation.every_n_epochs=0"]) == 0
    assert run_cli(["test", *args, "--ckpt_path=last", "--evaluation.fid=false", "--evaluation.grid_size=0"]) == 0
    report = json.loads(next((tmp_path / "bin").glob("version_*/eval/last/metrics.json")).read_text())
    assert report["datamodule"] == "binarized_mnist-dynamic"
    metrics = report["metrics"]
    assert metrics["nll"]["unit"] == "nats" and metrics["nll"]["n"] == 4 and metrics["nll"]["kind"] == "estimate"
    assert 0 < metrics["nll"]["value"] < 3 * 784 * math.log(2) and metrics["elbo"]["kind"] == "bound"


@pytest.mark.parametrize("family, small", [
    ("flow", ["--model.init_args.hidden_channels=8", "--model.init_args.steps_per_scale=1"]),
    ("diffusion", ["--model.init_args.backbone.init_args.channels=8", "--model.init_args.num_timesteps=20",
                   "--model.init_args.backbone.init_args.attention_resolutions=[]"]),
])
def test_flows_and_diffusion_model_two_levels_with_their_own_kind(tmp_path, family, small):
    """The other K = 2 users: a dequantized flow and a diffusion model's bound on binary images (their
    digits configs with this datamodule), each test NLL a bound in nats per image."""
    make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
    args = ["--config", str(ROOT / "configs" / family / "digits.yaml"), *quiet_trainer_args(tmp_path, family),
            *small, "--data=lit_gen.datamodules.BinarizedMNISTDataModule",
            f"--data.init_args.root={tmp_path / 'idx'}", "--data.init_args.val_size=4",
            "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4"]
    assert run_cli(["fit", *args, "--trainer.max_epochs=1", "--evaluation.every_n_epochs=0"]) == 0
    assert run_cli(["test", *args, "--ckpt_path=last", "--evaluation.fid=false", "--evaluation.grid_size=0"]) == 0
    metrics = json.loads(next((tmp_path / family).glob("version_*/eval/last/metrics.json")).read_text())["metrics"]
    assert metrics["nll"]["kind"] == "bound" and metrics["nll"]["unit"] == "nats"
    assert 0 < metrics["nll"]["value"] and metrics["bpd"]["value"] == pytest.approx(
        metrics["nll"]["value"] / (784 * math.log(2)), rel=1e-6)
