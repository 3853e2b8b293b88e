"""``lit-gen evaluate`` (lit_gen.evaluation.standalone): numbers equal torch-fidelity's on the same folders,
every input kind gives the same features, statistics files round-trip, bad input fails in one line."""

import json

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from lit_gen.errors import DataNotFoundError, LitGenError
from lit_gen.evaluation import features as F
from lit_gen.evaluation.metrics import fid, fid_from_statistics
from lit_gen.evaluation.standalone import classifier_head, inception_score, main


@pytest.fixture(scope="module")
def headed_weights(weights, tmp_path_factory):
    """The same network with a finite (random) classifier head, standing in for torch-fidelity's own file,
    which has one and cannot be downloaded here: the Inception Score path runs end to end."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, F.FEATURE_DIM, generator=g) * 0.05
    state["fc.bias"] = torch.randn(1008, generator=g)
    path = tmp_path_factory.mktemp("headed") / "inception-with-head.pth"
    torch.save(state, path)
    return path


def waves(n, c, size, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(n, c, 1, 1, generator=g) * 4 + 1
    phase = torch.rand(n, c, 1, 1, generator=g) * 6.28
    return ((0.5 + 0.45 * torch.sin(freq * (xx + yy) * 6.28 + phase)) * 255).round().to(torch.uint8)


def blobs(n, c, size, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = torch.rand(2, n, 1, 1, 1, generator=g) * size
    radius = torch.rand(n, 1, 1, 1, generator=g) * size / 3 + 2
    color = torch.rand(n, c, 1, 1, generator=g)
    img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, color, 1 - color)
    return ((img + 0.1 * torch.rand(n, c, size, size, generator=g)).clamp(0, 1) * 255).round().to(torch.uint8)


def write_pngs(folder, images, nested=False):
    """One PNG per (C, H, W) uint8 image; with ``nested`` every other one in a subfolder."""
    for i, image in enumerate(images):
        target = folder / "more" if nested and i % 2 else folder
        target.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(target / f"img_{i:03d}.png")
    return folder


def evaluate(tmp_path, *args):
    out = tmp_path / "results.json"
    main([*map(str, args), "--device", "cpu", "--json", str(out)])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_pngs(root / "generated", waves(20, 3, 16, seed=0)), write_pngs(
        root / "reference", blobs(24, 3, 16, seed=1), nested=True)


@pytest.fixture(scope="module")
def full_run(folders, headed_weights, tmp_path_factory):
    """Every metric on the two folders, writing the reference's statistics."""
    tmp = tmp_path_factory.mktemp("full_run")
    generated, reference = folders
    stats = tmp / "reference_stats.npz"
    report = evaluate(tmp, generated, reference, "--kid", "--kid-subset-size", 10, "--precision-recall",
                      "--isc", "--inception-weights", headed_weights, "--save-stats", stats)
    return report, stats


def test_equals_torch_fidelity_on_the_same_folders(full_run, folders, headed_weights):
    report, _ = full_run
    generated, reference = folders
    ref = torch_fidelity.calculate_metrics(
        input1=str(generated), input2=str(reference), fid=True, kid=True, prc=True, isc=True,
        feature_extractor="inception-v3-compat",  # PRC's default is VGG16: the same network for all
        kid_subset_size=10, samples_find_deep=True, feature_extractor_weights_path=str(headed_weights),
        cuda=False, verbose=False, cache=False, save_cpu_ram=True,
    )
    ours = report["metrics"]
    assert ours["fid"] > 1.0  # the two sets really differ
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3, abs=1e-6)
    assert ours["precision"] == pytest.approx(ref["precision"])
    assert ours["recall"] == pytest.approx(ref["recall"])
    assert ours["isc_mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-4)
    assert ours["isc_std"] == pytest.approx(ref["inception_score_std"], rel=1e-3, abs=1e-6)
    assert report["generated"] == {"input": str(generated), "kind": "folder", "num_images": 20}
    assert report["reference"]["num_images"] == 24  # half of them in a subfolder
    assert report["feature_extractor"]["id"] == F.EXTRACTOR_ID
    assert report["settings"]["kid_subset_size"] == 10 and report["not_available"] == {}


def test_statistics_file_gives_the_folders_fid(full_run, folders, weights, tmp_path):
    report, stats_path = full_run
    with np.load(stats_path) as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
        assert stats["mu"].dtype == stats["sigma"].dtype == np.float64 and int(stats["num_images"]) == 24
    # The fid-helper weights: the same features, but no classifier head, so no Inception Score.
    again = evaluate(tmp_path, folders[0], stats_path, "--isc", "--inception-weights", weights)
    assert again["metrics"]["fid"] == pytest.approx(report["metrics"]["fid"], rel=1e-6)
    assert set(again["metrics"]) == {"fid"} and "isc_mean" not in again["metrics"]
    assert "classifier head" in again["not_available"]["isc"]
    assert again["reference"] == {"input": str(stats_path), "kind": "statistics", "num_images": 24}
    assert classifier_head(F.get_inception(weights)) is None


def test_folder_npz_and_samples_give_the_same_features(weights, tmp_path):
    images = blobs(6, 3, 16, seed=2)
    folder = write_pngs(tmp_path / "folder", images)
    np.savez(tmp_path / "images.npz", images=images.permute(0, 2, 3, 1).numpy())  # (N, H, W, C)
    np.savez(tmp_path / "samples.npz", samples=images.float().numpy() / 255)  # as lit-gen predict writes
    w = ["--inception-weights", weights]
    same = evaluate(tmp_path, folder, tmp_path / "images.npz", *w, "--save-stats", tmp_path / "stats.npz")
    assert same["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["reference"]["kind"] == "npz:images"
    via_stats = evaluate(tmp_path, tmp_path / "samples.npz", tmp_path / "stats.npz", *w)
    assert via_stats["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert via_stats["generated"]["kind"] == "npz:samples"


def test_datamodule_split_inputs(weights, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {}\ndata:\n  class_path: DigitsDataModule\n  init_args:\n    test_size: 300\n")
    report = evaluate(tmp_path, f"data:{config}:test", "digits:test", "--num-images", 4,
                      "--inception-weights", weights)
    assert report["metrics"]["fid"] == pytest.approx(0.0, abs=1e-6)  # the same four digits
    assert report["generated"]["kind"] == report["reference"]["kind"] == "datamodule:digits:test"
    assert report["generated"]["num_images"] == 4


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three PNGs and a statistics file: the inputs the errors below are made of."""
    root = tmp_path_factory.mktemp("small")
    np.savez(root / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return write_pngs(root / "ok", waves(3, 3, 16, seed=0)), root / "stats.npz"


# Every error below is raised before any network is built.

def test_missing_or_empty_input(small, tmp_path):
    folder, _ = small
    with pytest.raises(DataNotFoundError, match="does not exist"):
        main([str(tmp_path / "nowhere"), str(folder)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no image files"):
        main([str(tmp_path / "empty"), str(folder)])


def test_images_of_two_sizes_name_one_file_of_each(small, tmp_path):
    mixed = write_pngs(tmp_path / "mixed", waves(2, 3, 16, seed=0))
    Image.new("RGB", (20, 16)).save(mixed / "wide.png")
    with pytest.raises(LitGenError, match=r"img_000\.png is 16x16, .*wide\.png is 20x16"):
        main([str(mixed), str(small[0])])


def test_npz_without_known_keys(small, tmp_path):
    np.savez(tmp_path / "odd.npz", pictures=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(LitGenError, match=r"\['pictures'\].*'images'.*'samples'.*'mu'"):
        main([str(tmp_path / "odd.npz"), str(small[0])])


def test_only_fid_against_statistics(small):
    folder, stats = small
    with pytest.raises(LitGenError, match="only FID is possible"):
        main([str(folder), str(stats), "--kid"])
    with pytest.raises(LitGenError, match="only FID is possible"):
        main([str(stats), str(folder), "--precision-recall"])
    with pytest.raises(LitGenError, match="needs images"):
        main([str(stats), str(folder), "--isc"])


def test_inconsistent_requests(small, tmp_path):
    folder, _ = small
    with pytest.raises(LitGenError, match="two inputs"):
        main([str(folder), "--fid"])
    with pytest.raises(LitGenError, match="nothing to compute"):
        main([str(folder)])
    (tmp_path / "c.yaml").write_text("trainer: {}\n")
    with pytest.raises(LitGenError, match="no data: block"):
        main([f"data:{tmp_path / 'c.yaml'}:test", str(folder)])


def test_inception_score_equals_torch_fidelity_on_synthetic_logits():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(50, 1008, generator=torch.Generator().manual_seed(0)) * 3
    ref = isc_features_to_metric(logits, splits=5, shuffle=True, rng_seed=2020)
    assert inception_score(logits, splits=5) == (ref["inception_score_mean"], ref["inception_score_std"])
    # A confident classifier spread evenly over 4 classes scores 4 (exp of the mutual information log 4).
    confident = torch.nn.functional.one_hot(torch.arange(40) % 4, 1008).float() * 40
    assert inception_score(confident, splits=1) == (pytest.approx(4.0, rel=1e-9), 0.0)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits[:3], splits=5)


@pytest.mark.parametrize("n_real,n_fake,dim", [(40, 30, 256), (300, 250, 64)])
def test_fid_from_statistics_equals_fid_and_torch_fidelity(n_real, n_fake, dim):
    from torch_fidelity.metric_fid import fid_features_to_statistics as stats
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = torch.Generator().manual_seed(n_real)
    real = torch.randn(n_real, dim, generator=g, dtype=torch.float64) * torch.rand(dim, generator=g) * 3
    fake = torch.randn(n_fake, dim, generator=g, dtype=torch.float64) + 0.3
    s_real, s_fake = stats(real), stats(fake)
    ours = fid_from_statistics(s_real["mu"], s_real["sigma"], s_fake["mu"], s_fake["sigma"])
    assert ours == pytest.approx(fid(real, fake), rel=1e-9)
    assert ours == pytest.approx(fid_statistics_to_metric(s_fake, s_real, verbose=False)[
        "frechet_inception_distance"], rel=1e-6)
    with pytest.raises(ValueError, match="dims differ"):
        fid_from_statistics(s_real["mu"], s_real["sigma"], s_fake["mu"][:4], s_fake["sigma"][:4, :4])
