"""Evaluation depends only on (seed, example): every draw of sampling and evaluation comes from the example's
own generator, so metrics and predicted images do not depend on batch sizes or the number of processes.

Three layers: the per-example generator set itself (row i is the same in any batch), every family's
``sample`` / ``loss`` / ``nll`` with it (chunked or split batches give the same rows), and the command end to
end (``metrics.json`` and ``samples.npz`` equal for two batch sizes and for 1 and 2 DDP processes).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, TensorDataset

from lit_gen.core import seeds
from lit_gen.core.levels import from_levels
from lit_gen.core.seeds import ExampleGenerators
from tests.conftest import TINY_FAMILIES, quiet_trainer_args, run_cli

DDP_CPU = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in spawned workers (they read OMP_NUM_THREADS): a CPU kernel's
    reduction order then does not depend on how a batch is split across threads."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ the generator set
def test_row_i_is_the_stream_seeded_seed_plus_i():
    """The EDM convention: example i's draws are those of a torch.Generator seeded seed + i."""
    rows = ExampleGenerators(7, [0, 3, 10])
    first, second = rows.randn((2, 3)), rows.rand((4,))
    for row, index in enumerate([0, 3, 10]):
        own = torch.Generator().manual_seed(7 + index)
        assert torch.equal(first[row], torch.randn((2, 3), generator=own))
        assert torch.equal(second[row], torch.rand((4,), generator=own))  # the stream continues


@pytest.mark.parametrize("draw", ["randn", "rand", "randint", "multinomial"])
def test_a_row_is_the_same_whatever_batch_it_is_drawn_in(draw):
    """Examples 0..9 drawn as one batch, as batches of 3, 3 and 4, and in another order: equal rows, for
    two successive draws (each generator's stream goes on independently of its neighbours)."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def two_draws(indices):
        source = ExampleGenerators(5, indices)
        if draw == "randn":
            return [seeds.randn((len(indices), 3, 2), generator=source) for _ in range(2)]
        if draw == "rand":
            return [seeds.rand((len(indices), 5), generator=source, dtype=torch.float64) for _ in range(2)]
        if draw == "randint":
            return [seeds.randint(0, 17, (len(indices), 6), generator=source) for _ in range(2)]
        return [seeds.multinomial(probs, len(indices), replacement=True, generator=source) for _ in range(2)]

    whole = two_draws(range(10))
    chunks = (range(3), range(3, 6), range(6, 10))
    split = [torch.cat(parts) for parts in zip(*(two_draws(r) for r in chunks))]
    order = [7, 2, 9, 0]
    shuffled = two_draws(order)
    for w, s, o in zip(whole, split, shuffled):
        assert torch.equal(w, s)
        assert torch.equal(w[order], o)
    assert not torch.equal(whole[0], whole[1])  # a second draw continues the stream, it does not repeat it


def test_example_dim_places_the_examples_on_any_axis():
    source = ExampleGenerators(0, range(4))
    k_first = seeds.randn((3, 4, 2), generator=source, example_dim=1)  # (k, B, d) as IWAE draws
    again = ExampleGenerators(0, range(4)).randn((3, 2))  # (B, k, d)
    assert torch.equal(k_first, again.transpose(0, 1))
    with pytest.raises(ValueError, match="4 examples"):
        seeds.randn((3, 5), generator=ExampleGenerators(0, range(4)))


def test_rows_share_the_streams_of_the_set():
    """A subset's generators are the set's own: drawing through the subset advances those rows only."""
    full = ExampleGenerators(3, range(4))
    subset = full.rows(torch.tensor([1, 3]))
    assert subset.indices == [1, 3]
    sub_draw = subset.randn((2,))
    reference = ExampleGenerators(3, range(4)).randn((2,))
    assert torch.equal(sub_draw, reference[[1, 3]])
    after = full.randn((2,))
    fresh = ExampleGenerators(3, range(4))
    fresh.rows([1, 3]).randn((2,))
    assert torch.equal(after, fresh.randn((2,)))


def test_per_row_multinomial_and_shapes():
    source = ExampleGenerators(1, range(3))
    per_row = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(seeds.multinomial(per_row, 2, replacement=True, generator=source),
                       torch.tensor([[0, 0], [1, 1], [2, 2]]))
    assert seeds.multinomial(torch.ones(5), 3, generator=source).shape == (3,)
    with pytest.raises(ValueError):
        seeds.multinomial(torch.ones(5), 4, generator=source)
    assert ExampleGenerators(0, []).randn((2,)).shape == (0, 2)


def test_a_plain_generator_draws_exactly_as_torch():
    """Backwards compatible: a torch.Generator (or None) draws the whole tensor as torch does."""
    draws = ((seeds.randn, ((3, 4),)), (seeds.rand, ((3, 4),)), (seeds.randint, (0, 9, (3, 4))))
    for function, args in draws:
        ours = function(*args, generator=torch.Generator().manual_seed(2))
        theirs = getattr(torch, function.__name__)(*args, generator=torch.Generator().manual_seed(2))
        assert torch.equal(ours, theirs)
    probs = torch.tensor([0.5, 0.5])
    ours = seeds.multinomial(probs, 6, replacement=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(ours, torch.multinomial(probs, 6, True, generator=torch.Generator().manual_seed(4)))
    assert seeds.rows(None, [0]) is None


# ------------------------------------------------------------------------------ every family
def _models():
    from lit_gen.models.autoregressive import MADE, GatedPixelCNN
    from lit_gen.models.diffusion import Diffusion, UNet
    from lit_gen.models.ebm import EBM
    from lit_gen.models.factorized import FactorizedCategorical
    from lit_gen.models.flow import Glow
    from lit_gen.models.flow_matching import FlowMatching
    from lit_gen.models.gan import GAN
    from lit_gen.models.vae import VAE

    return {  # name -> (model, sample knobs): every kind of draw the families make
        "vae": (VAE(channels=8, latent_dim=4, prior="mixture", iwae_samples=5, iwae_chunk=2),
                {"decode": "sample"}),
        "pixelcnn": (GatedPixelCNN(channels=8, num_layers=2, head_channels=16,
                                   likelihood="logistic_mixture"), {}),
        "made": (MADE(hidden_sizes=(32,), num_masks=3, order_agnostic=True), {}),
        "flow_uniform": (Glow(hidden_channels=8, steps_per_scale=1, dequantization="uniform",
                              prior="mixture"), {"temperature": 0.8}),
        "flow_variational": (Glow(hidden_channels=8, steps_per_scale=1, dequantization="variational"), {}),
        "diffusion": (Diffusion(backbone=functools.partial(UNet, channels=8), num_timesteps=12,
                                val_vlb_terms=4, vlb_batch_size=16),
                      {"sampler": "ddim", "steps": 6, "eta": 1.0}),
        # Hutchinson probes and dequantization are per-example draws; a fixed-step solver treats examples alike.
        "flow_matching": (FlowMatching(backbone=functools.partial(UNet, channels=8), likelihood_solver="heun",
                                       likelihood_steps=2, likelihood_divergence="hutchinson"),
                          {"solver": "euler", "steps": 2}),
        "diffusion_ddpm": (Diffusion(backbone=functools.partial(UNet, channels=8), num_timesteps=8),
                           {"sampler": "ddpm"}),
        "gan": (GAN(generator_channels=8, discriminator_channels=8), {"truncation": 1.5}),
        "ebm_noise": (EBM(channels=8, buffer_size=40, sample_steps=3, val_langevin_steps=2),
                      {"init": "noise"}),
        "ebm_buffer": (EBM(channels=8, buffer_size=40, sample_steps=3, val_langevin_steps=2),
                       {"init": "buffer"}),
        "factorized": (FactorizedCategorical(), {"temperature": 0.9}),
    }


@pytest.fixture(scope="module")
def families():
    torch.manual_seed(0)
    x = from_levels(torch.randint(0, 17, (7, 1, 8, 8)), 17)
    built = _models()
    for name, (model, _) in built.items():
        if name.startswith("flow"):
            model.loss(x)  # actnorm's data-dependent initialisation
        model.eval()
        with torch.no_grad():  # away from the initialisation: zero-initialised layers would hide the noise
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return built, x


def _chunks(n: int) -> list[range]:
    return [range(2), range(2, 3), range(3, n)]


@pytest.mark.parametrize("name", list(_models()))
def test_samples_do_not_depend_on_the_chunks_they_are_drawn_in(families, name, one_thread):
    built, _ = families
    model, knobs = built[name]
    whole = model.sample(7, generator=ExampleGenerators(0, range(7)), **knobs)
    chunked = torch.cat([model.sample(len(r), generator=ExampleGenerators(0, r), **knobs)
                         for r in _chunks(7)])
    assert torch.equal(whole, chunked)
    other_seed = model.sample(7, generator=ExampleGenerators(1, range(7)), **knobs)
    assert not torch.equal(whole, other_seed)  # the samples are random: the equality above is not vacuous
    # Backwards compatible: a plain generator still reproduces its samples, None draws from the global stream.
    plain = [model.sample(3, generator=torch.Generator().manual_seed(4), **knobs) for _ in range(2)]
    assert torch.equal(plain[0], plain[1])
    assert model.sample(2, **knobs).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("name", [n for n in _models() if n not in ("ebm_buffer", "diffusion_ddpm")])
def test_evaluation_noise_of_an_example_does_not_depend_on_its_batch(families, name, one_thread):
    """The batch of 7 and its three chunks give each example the same noise: equal per-example NLL, and
    loss terms (batch means) whose chunk-weighted mean is the whole batch's. Float32 networks round
    differently for another batch size, hence a tolerance, far below what the noise moves."""
    built, x = families
    model, _ = built[name]
    kwargs = model.eval_nll_kwargs("test")
    if model.has_likelihood:
        whole = model.nll(x, None, generator=ExampleGenerators(0, range(7)), **kwargs).nats
        split = torch.cat([model.nll(x[list(r)], None, generator=ExampleGenerators(0, r), **kwargs).nats
                           for r in _chunks(7)])
        torch.testing.assert_close(whole, split, rtol=1e-6, atol=1e-6)
        other_seed = model.nll(x, None, generator=ExampleGenerators(1, range(7)), **kwargs).nats
        if name in ("pixelcnn", "made", "factorized"):  # exact likelihoods draw nothing
            assert torch.equal(whole, other_seed)
        else:
            assert (whole - other_seed).abs().max() > 1e-3
    if "generator" not in inspect.signature(model.loss).parameters:
        return  # a loss without noise (autoregressive, factorized)

    def terms(indices, seed=0):
        out = model.loss(x[list(indices)], generator=ExampleGenerators(seed, indices))
        return {k: v.double() for k, v in (out if isinstance(out, dict) else {"loss": out}).items()}

    whole_terms = terms(range(7))
    parts = [(len(r), terms(r)) for r in _chunks(7)]
    for key, value in whole_terms.items():
        torch.testing.assert_close(value, sum(n * t[key] for n, t in parts) / 7, rtol=1e-5, atol=1e-6)
    assert (whole_terms["loss"] - terms(range(7), seed=1)["loss"]).abs() > 1e-6  # the loss draws noise


def test_the_diffusion_bound_estimate_draws_each_examples_own_timesteps(families, one_thread):
    """``val_vlb: subset``: stratified timesteps per example, (terms, B), the same for an example in any
    batch."""
    from lit_gen.models.diffusion.likelihood import stratified_timesteps

    t, weights = stratified_timesteps(100, 5, ExampleGenerators(0, range(3)))
    assert t.shape == (5, 3) and weights.tolist() == [1.0, 25.0, 24.0, 25.0, 25.0]
    assert (t[0] == 0).all() and len({tuple(column) for column in t.T.tolist()}) == 3
    built, x = families
    model, _ = built["diffusion"]
    whole = model.vlb(x, num_terms=4, generator=ExampleGenerators(0, range(7))).total
    split = torch.cat([model.vlb(x[list(r)], num_terms=4, generator=ExampleGenerators(0, r)).total
                       for r in _chunks(7)])
    torch.testing.assert_close(whole, split, rtol=1e-6, atol=1e-6)  # float32 denoiser, float64 terms
    other_seed = model.vlb(x, num_terms=4, generator=ExampleGenerators(1, range(7))).total
    assert (whole - other_seed).abs().min() > 1e-3  # other timesteps and x_t for every example


def test_evaluation_indices_come_from_the_loaders_sampler():
    """Under the unrepeated DDP sampler rank 1 of 2 holds examples 1, 3, 5, ...: its batch 1 gets the
    generators of examples 5 and 7 (seeded evaluation_seed + 5, + 7), not those of positions 2 and 3."""
    from lit_gen.models.factorized import FactorizedCategorical

    dataset = TensorDataset(torch.zeros(11, 1, 8, 8))
    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    model = FactorizedCategorical()
    model.evaluation_seed = 40
    model._trainer = SimpleNamespace(test_dataloaders=loader, val_dataloaders=[loader])
    source = model.evaluation_generators("test", 1, 2)
    assert source.indices == [5, 7] and source.seed == 40
    assert torch.equal(source.randn((3,)), ExampleGenerators(40, [5, 7]).randn((3,)))
    assert model.evaluation_generators("val", 2, 1).indices == [9]
    with pytest.warns(UserWarning, match="global stream"):  # a batch the loader does not have
        assert model.evaluation_generators("test", 2, 2) is None
    model._trainer = None
    assert model.evaluation_generators("test", 0, 2) is None  # outside a trainer: the global stream


def test_an_ebm_outside_fit_takes_rank_zeros_chains_on_every_rank():
    """Test / predict on as many processes as the fit: still rank 0's chains everywhere, so buffer-started
    samples do not depend on the number of processes (a resumed fit keeps each rank's own)."""
    from lit_gen.models.ebm import EBM
    from lit_gen.models.ebm.module import BUFFER_KEY, OTHER_RANKS_KEY

    model = EBM(channels=8, buffer_size=4)
    rank0, rank1 = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    checkpoint = {"lit_gen": model.checkpoint_identity(), BUFFER_KEY: {"samples": rank0},
                  OTHER_RANKS_KEY: [{"samples": rank1}]}
    for fn, expected in (("test", rank0), ("predict", rank0), ("fit", rank1)):
        model._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), global_rank=1, world_size=2)
        model.on_load_checkpoint(checkpoint)
        assert torch.equal(model.buffer.samples, expected), fn


# ------------------------------------------------------------------------------ end to end
# Tiny models, a 70-example test split (not a multiple of either batch size nor of 2 ranks) and 8 samples.
FAMILY_ARGS = {
    # k = 5 importance samples in chunks of 2: several draws per example, one chunking for any batch
    "vae": ["--model.init_args.iwae_samples=5", "--model.init_args.iwae_chunk=2"],
    "flow": ["--model.init_args.dequantization=uniform"],
    # images per network call of the bound: 6 terms a call at batch 16, 1 at batch 64
    "diffusion": ["--model.init_args.vlb_batch_size=100"],
}
SAMPLE_METRICS = ["--evaluation.test_num_samples=8", "--evaluation.num_real=8", "--evaluation.grid_size=4",
                  "--evaluation.kid=true", "--evaluation.kid_subset_size=4", "--evaluation.kid_subsets=5",
                  "--evaluation.precision_recall=true", "--evaluation.pr_neighbors=5"]
TIMINGS = {"sample_sec_per_image"}  # wall-clock: the one entry of metrics.json that may differ


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One short fit per family, shared by the test and predict runs below."""
    made: dict[str, tuple[list[str], str]] = {}

    def get(family: str) -> tuple[list[str], str]:
        if family not in made:
            config, tiny = TINY_FAMILIES[family]
            # the configs' own callbacks, EMA included (lit-gen's EMA can be pickled for ddp_spawn)
            base = ["--config", str(config), *tiny, *FAMILY_ARGS[family], "--data.init_args.test_size=70"]
            root = tmp_path_factory.mktemp(f"fit_{family}")
            assert run_cli(["fit", *base, *quiet_trainer_args(root, "fit"), "--evaluation.every_n_epochs=0",
                            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                            "--trainer.limit_val_batches=1"]) == 0
            made[family] = base, str(next(root.glob("fit/version_*/checkpoints/last.ckpt")))
        return made[family]

    return get


def _test_metrics(base: list[str], ckpt: str, root, name: str, *args: str) -> dict:
    assert run_cli(["test", *base, *quiet_trainer_args(root, name), *SAMPLE_METRICS, f"--ckpt_path={ckpt}",
                    *args]) == 0
    return json.loads(next(root.glob(f"{name}/version_*/eval/*/metrics.json")).read_text())["metrics"]


@pytest.mark.parametrize("family", list(FAMILY_ARGS))
def test_metrics_do_not_depend_on_batch_sizes_or_processes(checkpoints, tmp_path, family, one_thread):
    """The same checkpoint tested with eval batches of 16 and 64, sample chunks of 4, 8 and 3, on 1 and 2
    processes: every metric of metrics.json equal (the NLL estimate or bound, its loss terms, FID, KID,
    precision/recall). Another evaluation seed moves the Monte-Carlo numbers: the noise is there."""
    base, ckpt = checkpoints(family)
    runs = {
        "b16": _test_metrics(base, ckpt, tmp_path, "b16", "--data.init_args.eval_batch_size=16",
                             "--evaluation.sample_batch_size=4"),
        "b64": _test_metrics(base, ckpt, tmp_path, "b64", "--data.init_args.eval_batch_size=64",
                             "--evaluation.sample_batch_size=8"),
        "ddp": _test_metrics(base, ckpt, tmp_path, "ddp", "--data.init_args.eval_batch_size=16",
                             "--evaluation.sample_batch_size=3", *DDP_CPU),
    }
    reference = runs["b16"]
    assert reference["nll"]["n"] == 70 and {"nll", "loss", "fid", "kid_mean", "precision"} <= set(reference)
    for name, metrics in runs.items():
        assert set(metrics) == set(reference), name
        for key in set(reference) - TIMINGS:
            expected = pytest.approx(reference[key]["value"], rel=1e-6, abs=1e-9)
            assert metrics[key]["value"] == expected, (name, key)
        assert metrics["nll"]["n"] == 70, name
    other = _test_metrics(base, ckpt, tmp_path, "seed1", "--data.init_args.eval_batch_size=16",
                          "--evaluation.sample_batch_size=4", "--evaluation.seed=1")
    for key in ("nll", "fid"):
        assert not math.isclose(other[key]["value"], reference[key]["value"], rel_tol=1e-6), key


def test_the_validation_bound_estimate_does_not_depend_on_the_batch_size(checkpoints, tmp_path, one_thread):
    """``val_vlb: subset`` under ``lit-gen validate``: each example's own stratified timesteps and x_t, so
    val/vlb_subset and the validation loss are the same with eval batches of 16 and 64."""
    from lit_gen.cli import LitGenCLI

    base, ckpt = checkpoints("diffusion")
    logged = {}
    for size in (16, 64):
        cli = LitGenCLI(args=["validate", *base, *quiet_trainer_args(tmp_path, f"v{size}"), f"--ckpt_path={ckpt}",
                              "--model.init_args.val_vlb=subset", "--model.init_args.val_vlb_terms=5",
                              f"--data.init_args.eval_batch_size={size}", "--evaluation.val_num_samples=0"])
        logged[size] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()
                        if k.startswith("val/") and not k.endswith("_sec_per_image")}  # a time
    assert {"val/vlb_subset", "val/loss"} <= set(logged[16]) and logged[16].keys() == logged[64].keys()
    for key, value in logged[16].items():
        assert logged[64][key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("family, knobs", [("vae", ["--model.init_args.sample_kwargs={decode: sample}"]),
                                           ("diffusion", [])])  # the digits config: DDIM with eta = 1
def test_predicted_images_do_not_depend_on_chunk_size_or_processes(checkpoints, tmp_path, family, knobs,
                                                                   one_thread):
    """``lit-gen predict``: 10 samples in chunks of 4 and of 6, and on 2 processes: the same samples.npz."""
    base, ckpt = checkpoints(family)
    arrays = {}
    chunkings = {"c4": ["--data.init_args.eval_batch_size=4"], "c6": ["--data.init_args.eval_batch_size=6"],
                 "ddp": ["--data.init_args.eval_batch_size=4", *DDP_CPU]}
    for name, args in chunkings.items():
        out = tmp_path / name / "predictions"
        assert run_cli(["predict", *base, *knobs, *quiet_trainer_args(tmp_path, name), f"--ckpt_path={ckpt}",
                        "--data.init_args.predict_num_samples=10", f"--prediction.output_dir={out}",
                        "--prediction.individual=false", *args]) == 0
        with np.load(out / "samples.npz") as npz:
            arrays[name] = {key: npz[key] for key in npz.files}
    assert arrays["c4"]["images"].shape == (10, 1, 8, 8)
    assert len(np.unique(arrays["c4"]["images"].reshape(10, -1), axis=0)) == 10  # ten different samples
    for name in ("c6", "ddp"):
        assert arrays[name].keys() == arrays["c4"].keys()
        for key, value in arrays["c4"].items():
            assert np.array_equal(arrays[name][key], value), (name, key)

