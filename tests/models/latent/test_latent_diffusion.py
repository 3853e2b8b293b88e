"""The continuous pair: an Autoencoder whose latent_scale is the standard deviation of its latent means, and
LatentDiffusion, a diffusion (or flow matching) model of the scaled latents of that frozen first stage, kept
inside its checkpoint; both configs through the CLI, in order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_gen.core.levels import from_signed, to_signed
from lit_gen.core.seeds import ExampleGenerators
from lit_gen.errors import CheckpointError, ConfigurationError
from lit_gen.models.latent import Autoencoder, LatentDiffusion
from lit_gen.models.latent.first_stage import FIRST_STAGE_KEY
from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.models.latent.helpers import (
    DIGITS,
    save_first_stage,
    tiny_autoencoder,
    tiny_latent_model,
    tiny_vqvae,
)
from tests.models.latent.test_cli import data_args

CONFIGS = ROOT / "configs" / "latent"
X = torch.randint(0, 17, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16
LABELS = torch.tensor([0, 3, 3, 9, 1, 5])


@pytest.fixture
def first_stage_path(tmp_path):
    return save_first_stage(tiny_autoencoder(seed=1), tmp_path / "ae" / "version_0" / "checkpoints" / "last.ckpt")


def pair(path, kind: str = "diffusion", latent_args: dict | None = None, **kwargs) -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(first_stage=str(path), latent_model=tiny_latent_model(kind, **(latent_args or {})),
                           **DIGITS, **kwargs)


def perturbed(model: LatentDiffusion) -> LatentDiffusion:
    """Random latent-model weights (the U-Net's zero-initialized output would ignore its input and labels)
    and a decoder whose images differ with its latents (an untrained one gives about 0.5 everywhere)."""
    with torch.no_grad():
        for p in model.latent_model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for p in model.first_stage.decoder.parameters():
            p.mul_(3.0)
    return model.eval()


# ------------------------------------------------------------------------------------- the first stage
def test_latent_scale_is_the_standard_deviation_of_the_latent_means_and_scaling_round_trips():
    model = tiny_autoencoder().train()
    batches = [torch.randint(0, 17, (8, 1, 8, 8), generator=torch.Generator().manual_seed(i)) / 16 for i in range(3)]
    for batch in batches:  # training-mode losses, no optimizer step: one encoder throughout
        assert model.loss(batch)["latent_scale"] == model.latent_scale
    means = torch.cat([model.encode_mean(b) for b in batches])
    assert means.shape == (24, 2, 4, 4)
    assert float(model.latent_scale) == pytest.approx(float(means.detach().std(unbiased=False)), rel=1e-5)
    scaled = model.scale_latents(means)
    assert float(scaled.std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(model.unscale_latents(scaled), means, rtol=1e-6, atol=1e-7)
    assert "latent_scale" in model.state_dict()  # a buffer: in every checkpoint of the weights it describes

    # past 1 / (1 - momentum) steps it follows the latest batches (momentum 0.5: a window of about 2)
    quick = tiny_autoencoder(scale_momentum=0.5).train()
    for batch in batches + [batches[-1]] * 30:
        quick.loss(batch)
    assert float(quick.latent_scale) == pytest.approx(float(quick.encode_mean(batches[-1]).std(unbiased=False)),
                                                      rel=1e-5)
    before = quick.latent_scale.clone()
    quick.eval().loss(batches[0])
    quick.train().freeze_first_stage().loss(batches[0])
    assert torch.equal(quick.latent_scale, before)  # evaluation and a frozen first stage leave it


def test_the_autoencoder_nll_is_the_negative_elbo_and_its_samples_decode_standard_normal_latents():
    model = tiny_autoencoder().eval()
    out = model.nll(X, generator=ExampleGenerators(3, range(6)))
    terms = model.loss(X, generator=ExampleGenerators(3, range(6)))
    assert out.kind == "bound" and model.likelihood_kind == "bound"
    assert float(out.nats.mean()) == pytest.approx(float(terms["neg_elbo_nats"]), rel=1e-5)
    assert float(terms["neg_elbo_nats"]) == pytest.approx(float(terms["recon_nats"] + terms["kl_nats"]), rel=1e-5)
    images = model.sample(3, generator=ExampleGenerators(0, range(3)))
    assert images.shape == (3, 1, 8, 8) and torch.equal(images * 16, (images * 16).round())


# ------------------------------------------------------------------------------------ the second stage
def test_the_first_stage_is_frozen_and_unchanged_by_a_training_step(first_stage_path):
    model = pair(first_stage_path, conditional=True).train()
    frozen = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    inner = {k: v.clone() for k, v in model.latent_model.state_dict().items()}
    optimizer = model.configure_optimizers()
    out = model.loss(X, LABELS)
    assert set(out) == {"loss", "mse"}
    out["loss"].backward()
    optimizer.step()
    assert all(not p.requires_grad and p.grad is None for p in model.first_stage.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in model.first_stage.state_dict().items())
    assert any(not torch.equal(inner[k], v) for k, v in model.latent_model.state_dict().items())


def test_the_latent_model_trains_on_the_scaled_latent_means(tmp_path):
    autoencoder = tiny_autoencoder(seed=1)
    autoencoder.latent_scale.fill_(0.25)
    model = pair(save_first_stage(autoencoder, tmp_path / "ae.ckpt"))
    seen = {}

    def loss(x, labels, generator=None):
        seen["x"] = x
        return {"loss": x.sum()}

    model.latent_model.loss = loss
    model.loss(X)
    expected = autoencoder.encoder(to_signed(X)).chunk(2, 1)[0] / 0.25
    assert torch.allclose(to_signed(seen["x"]), expected, atol=1e-5)  # the inner model's 2x - 1 gives them back


@pytest.mark.parametrize("kind", ["diffusion", "flow_matching"])
def test_samples_are_decoded_unscaled_latents_on_the_datas_levels_seeded_per_sample(first_stage_path, kind):
    model = perturbed(pair(first_stage_path, kind))
    images = model.sample(4, generator=ExampleGenerators(7, range(4)), steps=3)
    assert images.shape == (4, 1, 8, 8) and torch.equal(images * 16, (images * 16).round())
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(model.sample(2, generator=ExampleGenerators(7, range(2, 4)), steps=3), images[2:])
    inner = model.latent_model
    raw = (inner.sample_signed(4, generator=ExampleGenerators(7, range(4)), steps=3) if kind == "diffusion"
           else to_signed(inner.sample(4, generator=ExampleGenerators(7, range(4)), steps=3)))
    decoded = model.first_stage.decode_latent(raw * model.first_stage.latent_scale)
    assert torch.equal(images, decoded)


def test_latents_beyond_one_are_not_clamped_and_diffusion_samples_are_its_signed_samples_mapped(first_stage_path):
    model = perturbed(pair(first_stage_path))
    autoencoder, inner = model.first_stage, model.latent_model
    inner.sample_signed = lambda n, **knobs: torch.full((n, *autoencoder.latent_shape), 2.5)
    assert torch.equal(model.sample(2), autoencoder.decode_latent(torch.full((2, 2, 4, 4), 2.5 * autoencoder.latent_scale)))
    del inner.sample_signed
    # Diffusion.sample is its sample_signed clamped to [-1, 1], mapped to [0, 1]: the same draw
    signed = inner.sample_signed(3, generator=ExampleGenerators(1, range(3)), steps=4, eta=1.0)
    plain = inner.sample(3, generator=ExampleGenerators(1, range(3)), steps=4, eta=1.0)
    assert torch.equal(plain, from_signed(signed.float().clamp(-1, 1)))


def test_guidance_works_conditionally(first_stage_path):
    # x0 prediction: the random network's latents stay of order one (eps prediction's grow large at T = 10)
    model = perturbed(pair(first_stage_path, latent_args={"prediction": "x0"}, conditional=True))
    draw = lambda labels, w: model.sample(2, labels=torch.tensor(labels), generator=ExampleGenerators(5, range(2)),  # noqa: E731
                                          steps=3, guidance_scale=w, decode="mean")
    assert not torch.equal(draw([1, 1], 1.0), draw([7, 7], 1.0))  # the labels reach the latent model
    assert torch.equal(draw([1, 1], 0.0), draw([7, 7], 0.0))  # scale 0: the unconditional model
    assert not torch.equal(draw([1, 1], 3.0), draw([1, 1], 1.0))
    assert model.sample(3, steps=2).shape == (3, 1, 8, 8)  # balanced labels by default
    unconditional = pair(first_stage_path)
    with pytest.raises(ConfigurationError, match="guidance_scale needs a conditional model"):
        unconditional.sample(2, guidance_scale=2.0)


def test_knobs_are_the_latent_models(first_stage_path):
    with pytest.raises(ConfigurationError, match="FlowMatching.sample has no knob 'sampler'"):
        pair(first_stage_path, "flow_matching", sample_kwargs={"sampler": "ddim"})
    model = pair(first_stage_path, "flow_matching", sample_kwargs={"solver": "euler", "decode": "sample"})
    with pytest.raises(ConfigurationError, match="eta is not a knob of its latent model FlowMatching"):
        model.sample(1, eta=1.0)
    with pytest.raises(ConfigurationError, match="LatentDiffusion.sample has no knob 'temperature'"):
        pair(first_stage_path, sample_kwargs={"temperature": 1.0})


def test_the_checkpoint_keeps_the_first_stage_and_rebuilds_both_stages_without_the_file(first_stage_path, tmp_path):
    model = perturbed(pair(first_stage_path))
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    assert any(k.startswith("first_stage.") for k in checkpoint["state_dict"])
    assert "first_stage.latent_scale" in checkpoint["state_dict"]
    torch.save(checkpoint, tmp_path / "second.ckpt")  # plain data: loadable with weights_only
    checkpoint = torch.load(tmp_path / "second.ckpt", weights_only=True)
    first_stage_path.unlink()
    later = pair(first_stage_path)
    assert later.first_stage is None and later.latent_model is None
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        later.sample(1)
    later.on_load_checkpoint(checkpoint)
    later.load_state_dict(checkpoint["state_dict"])
    same = ExampleGenerators(2, range(3))
    assert torch.equal(later.eval().sample(3, generator=same, steps=3),
                       model.sample(3, generator=ExampleGenerators(2, range(3)), steps=3))
    assert later.first_stage_record.digest == checkpoint[FIRST_STAGE_KEY]["digest"]


def test_bad_first_stages_and_latent_models_are_refused(first_stage_path, tmp_path):
    vq = save_first_stage(tiny_vqvae(), tmp_path / "vq.ckpt")
    with pytest.raises(CheckpointError, match=r"holds a lit_gen.models.latent.vqvae.VQVAE checkpoint; a first stage "
                                              r"is a lit_gen.models.latent.autoencoder.Autoencoder"):
        pair(vq)
    with pytest.raises(CheckpointError, match="num_levels=17, but this data has num_levels=256"):
        LatentDiffusion(first_stage=str(first_stage_path), latent_model=tiny_latent_model(), data_shape=(1, 8, 8),
                        num_levels=256)
    with pytest.raises(ConfigurationError, match="clip_x0=true clips its predictions"):
        LatentDiffusion(first_stage=str(first_stage_path), latent_model=tiny_latent_model(clip_x0=True), **DIGITS)
    with pytest.raises(ConfigurationError, match="latent_model must name"):
        LatentDiffusion(first_stage=str(first_stage_path), **DIGITS)
    with pytest.raises(ConfigurationError, match="first_stage must name the Autoencoder"):
        LatentDiffusion(latent_model=tiny_latent_model(), **DIGITS)
    with pytest.raises(ConfigurationError, match="Autoencoder is unconditional"):
        Autoencoder(**DIGITS, conditional=True)


# ------------------------------------------------------------------------------------------------- CLI
TINY_FIRST = ["--model.init_args.channels=8", "--model.init_args.latent_channels=2", "--model.init_args.num_mixtures=2"]
TINY_SECOND = ["--model.init_args.latent_model.init_args.backbone.init_args.channels=8",
               "--model.init_args.latent_model.init_args.num_timesteps=10",
               "--model.init_args.latent_model.init_args.backbone.init_args.attention_resolutions=[]"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]


def runs_under(tmp_path, name: str) -> list[str]:
    # each config's own run name, both under one save_dir: as `lit-gen fit` leaves them in runs/
    return [arg for arg in quiet_trainer_args(tmp_path / "runs", name) if "logger.init_args.name" not in arg]


def test_a_first_stage_fit_feeds_a_second_stage_fit_whose_checkpoint_alone_tests_and_predicts(tmp_path, capsys):
    runs = tmp_path / "runs"
    first = ["--config", str(CONFIGS / "autoencoder_digits.yaml"), *TINY_FIRST]
    assert run_cli(["fit", *first, *runs_under(tmp_path, "first"), *SHORT]) == 0
    first_ckpt = torch.load(runs / "autoencoder-digits" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    scale = first_ckpt["state_dict"]["latent_scale"]
    assert 0 < float(scale) != 1.0  # measured in training

    second = ["--config", str(CONFIGS / "latent_diffusion_digits.yaml"), *TINY_SECOND, "--model.init_args.conditional=true",
              "--model.init_args.sample_kwargs={guidance_scale: 2.0, eta: 1.0}"]
    assert run_cli(["fit", *second, *runs_under(tmp_path, "second"), *SHORT, "--evaluation.every_n_epochs=0"]) == 0
    ckpt_path = runs / "latent-diffusion-digits" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert torch.equal(ckpt["state_dict"]["first_stage.latent_scale"], scale)  # the first stage inside, as trained
    assert ckpt[FIRST_STAGE_KEY]["identity"]["model"] == "lit_gen.models.latent.autoencoder.Autoencoder"

    (runs / "autoencoder-digits").rename(tmp_path / "elsewhere")  # only the second stage's checkpoint is left
    assert run_cli(["test", *second, *runs_under(tmp_path, "second"), "--ckpt_path=last",
                    "--trainer.limit_test_batches=1", "--evaluation.test_num_samples=4", "--evaluation.num_real=4",
                    "--evaluation.sample_batch_size=4", "--evaluation.grid_size=0"]) == 0
    report = json.loads(max((runs / "latent-diffusion-digits").glob("version_*/eval/*/metrics.json")).read_text())
    metrics = report["metrics"]
    assert metrics["nll"]["kind"] == "not available" and metrics["nll"]["value"] is None
    assert metrics["fid"]["n_generated"] == 4 and metrics["loss"]["n"] == 64

    out = tmp_path / "predicted"
    assert run_cli(["predict", *second, *runs_under(tmp_path, "second"), "--ckpt_path=last",
                    "--data.init_args.predict_num_samples=4", "--data.init_args.eval_batch_size=4",
                    f"--prediction.output_dir={out}"]) == 0
    written = np.load(out / "samples.npz")
    samples = written["samples"].astype(np.float64)
    assert samples.shape == (4, 1, 8, 8) and np.allclose(samples * 16, np.round(samples * 16))  # 17 levels
    assert written["labels"].tolist() == [0, 1, 2, 3]


def test_a_vqvae_checkpoint_as_the_first_stage_stops_in_one_line(tmp_path, capsys):
    vq = save_first_stage(tiny_vqvae(), tmp_path / "vq.ckpt")
    code = run_cli(["fit", "--config", str(CONFIGS / "latent_diffusion_digits.yaml"), *TINY_SECOND,
                    *quiet_trainer_args(tmp_path), "--trainer.fast_dev_run=true", f"--model.init_args.first_stage={vq}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "holds a lit_gen.models.latent.vqvae.VQVAE checkpoint" in lines[0]


FAST = ["--trainer.fast_dev_run=true", "--evaluation.fid=false", "--data.init_args.batch_size=4"]


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist"])
def test_fast_dev_run_of_both_configs(dataset, tmp_path):
    assert run_cli(["fit", "--config", str(CONFIGS / f"autoencoder_{dataset}.yaml"), *quiet_trainer_args(tmp_path),
                    *FAST, *TINY_FIRST, *data_args(dataset, tmp_path)]) == 0
    shape, levels, downsamples = ((1, 8, 8), 17, 1) if dataset == "digits" else ((1, 28, 28), 256, 2)
    autoencoder = Autoencoder(data_shape=shape, num_levels=levels, num_classes=10, latent_channels=2, channels=8,
                              num_downsamples=downsamples, likelihood="categorical")
    path = save_first_stage(autoencoder, tmp_path / "first" / "last.ckpt")
    assert run_cli(["fit", "--config", str(CONFIGS / f"latent_diffusion_{dataset}.yaml"),
                    *quiet_trainer_args(tmp_path), *FAST, *TINY_SECOND, *data_args(dataset, tmp_path),
                    f"--model.init_args.first_stage={path}"]) == 0
