"""FID/KID/precision-recall against torch-fidelity, on synthetic features, and the feature cache."""

import math

import pytest
import torch
import torch_fidelity

from lit_gen.evaluation import features as F
from lit_gen.evaluation.metrics import FeatureCache, ImageFingerprint, fid, kid, precision_recall


class _Uint8Images(torch.utils.data.Dataset):
    """What torch-fidelity accepts: a Dataset of uint8 (3, H, W) tensors."""

    def __init__(self, images):
        self.images = images if images.shape[1] == 3 else images.repeat(1, 3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _waves(n, c, size, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(n, c, 1, 1, generator=g) * 4 + 1
    phase = torch.rand(n, c, 1, 1, generator=g) * 6.28
    img = 0.5 + 0.45 * torch.sin(freq * (xx + yy) * 6.28 + phase)
    return (img * 255).round().to(torch.uint8)


def _blobs(n, c, size, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = (torch.rand(2, n, 1, 1, 1, generator=g) * size)
    radius = torch.rand(n, 1, 1, 1, generator=g) * size / 3 + 2
    color = torch.rand(n, c, 1, 1, generator=g)
    img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, color, 1 - color)
    img = img + 0.1 * torch.rand(n, c, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("channels,size,n", [(3, 32, 20), (1, 28, 12)], ids=["rgb32", "gray28"])
def test_matches_torch_fidelity(weights, channels, size, n):
    real_u8, fake_u8 = _waves(n, channels, size, seed=0), _blobs(n, channels, size, seed=1)
    subset = n // 2
    ref = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(fake_u8),  # torch-fidelity's convention: input1 generated, input2 real
        input2=_Uint8Images(real_u8),
        fid=True,
        kid=True,
        prc=True,
        feature_extractor="inception-v3-compat",  # PRC's default is VGG16 (as in the paper): same net for all
        kid_subset_size=subset,
        feature_extractor_weights_path=str(weights),
        cuda=False,
        verbose=False,
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes
    )
    net = F.get_inception(weights)
    real = net(real_u8.float() / 255)  # lit-gen's input: float images in [0, 1], 1 or 3 channels
    fake = net(fake_u8.float() / 255)

    ours = fid(real, fake)
    assert ours > 1.0  # the two sets really differ
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    mean, std = kid(real, fake, subset_size=subset)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3, abs=1e-6)
    precision, recall = precision_recall(real, fake)
    assert (precision, recall) == (pytest.approx(ref["precision"]), pytest.approx(ref["recall"]))


def test_fid_synthetic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)  # float32 x + shift would round
    shift = torch.arange(8.0, dtype=torch.float64) / 4
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)
    # A pure shift leaves the covariance unchanged, so FID is exactly |shift|^2.
    assert fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    assert fid(x.float(), (2 * x).double()) > 0  # mixed dtypes are fine: all math is float64
    with pytest.raises(ValueError, match="at least 2"):
        fid(x[:1], x)
    with pytest.raises(ValueError, match="dims differ"):
        fid(x, x[:, :4])


@pytest.mark.parametrize("n_real,n_fake,dim", [(40, 30, 256), (10, 60, 16), (300, 250, 64)])
def test_fid_equals_torch_fidelity_formula(n_real, n_fake, dim):
    """Our eigvalsh-of-a-small-Gram route vs torch-fidelity's eigvals(S_r S_f), N < D, mixed, N > D."""
    from torch_fidelity.metric_fid import fid_features_to_statistics as stats
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = torch.Generator().manual_seed(n_real)
    real = torch.randn(n_real, dim, generator=g, dtype=torch.float64) * torch.rand(dim, generator=g) * 3
    fake = torch.randn(n_fake, dim, generator=g, dtype=torch.float64) + 0.3
    ref = fid_statistics_to_metric(stats(fake), stats(real), verbose=False)["frechet_inception_distance"]
    # torch-fidelity's own round-off is ~1e-7 relative when N < D (spurious complex eigenvalues).
    assert fid(real, fake) == pytest.approx(ref, rel=1e-6)


def test_kid_clamps_subset_size():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 16, generator=g), torch.randn(25, 16, generator=g) + 3
    mean, std = kid(x, y, subsets=10)  # default subset_size 1000 > 25: clamped, not an error
    assert mean > 0 and std >= 0 and math.isfinite(mean)
    same, _ = kid(x, x, subsets=10)
    assert abs(same) < mean / 10
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


def test_precision_recall_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 16, generator=g)
    b = torch.randn(30, 16, generator=g) + 100.0  # a far-away cluster
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    assert precision_recall(a, b) == (0.0, 0.0)
    # Fake covers only half of real: every fake sample is realistic (precision 1), but only half of
    # the real distribution is covered (recall 0.5). Swapped arguments would give (0.5, 1).
    real = torch.cat([a, b])
    assert precision_recall(real, a.clone()) == (1.0, 0.5)
    with pytest.raises(ValueError):
        precision_recall(a[:3], a, k=3)  # needs k neighbours besides the sample itself


def test_feature_cache_key():
    k = FeatureCache.key("mnist", "test", "inception-v3-compat-2015-12-05", 10000, image_size=28)
    assert k.startswith("mnist__test__inception-v3-compat-2015-12-05__n10000__image_size=28__")
    odd = FeatureCache.key("my data/set", "tr ain", "x:y", 5)
    assert all(ch.isalnum() or ch in "._=-" for ch in odd)
    assert FeatureCache.key("a/b", "s", "e", 1) != FeatureCache.key("a-b", "s", "e", 1)
    assert FeatureCache.key("d", "s", "e", 1, seed=0) != FeatureCache.key("d", "s", "e", 1, seed=1)
    assert FeatureCache.key("d", "s", "e", 1) == FeatureCache.key("d", "s", "e", 1)


def test_feature_cache_miss_hit_and_corrupt(tmp_path):
    cache = FeatureCache(tmp_path / "features")
    key = cache.key("cifar10", "test", "ext", 4)
    assert cache.load(key) is None and (cache.hits, cache.misses) == (0, 1)
    feats = torch.randn(4, 2048)
    cache.save(key, feats)
    assert torch.equal(cache.load(key), feats) and (cache.hits, cache.misses) == (1, 1)
    assert [p.name for p in (tmp_path / "features").iterdir()] == [f"{key}.pt"]  # no temp files left

    cache.path(key).write_bytes(b"\x00not a torch file")  # e.g. a crash of some other writer
    assert cache.load(key) is None and (cache.hits, cache.misses) == (1, 2)
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:0])  # empty file
    assert cache.load(key) is None and cache.misses == 3
    cache.save(key, feats)  # overwritten
    assert torch.equal(cache.load(key), feats) and cache.hits == 2


def digest(*batches):
    fingerprint = ImageFingerprint()
    for batch in batches:
        fingerprint.update(batch)
    return fingerprint.hexdigest()


def test_image_fingerprint_is_exact_and_independent_of_batching():
    images = torch.randint(0, 17, (8, 1, 8, 8)).float() / 16
    reference = digest(images)
    assert digest(images[:5], images[5:]) == digest(*images.split(1)) == reference == digest(images.clone())
    nudged = images.clone()
    nudged[3, 0, 2, 2] = torch.nextafter(nudged[3, 0, 2, 2], torch.tensor(2.0))  # one ulp of one pixel
    assert digest(nudged) != reference
    assert digest(images[[1, 0, *range(2, 8)]]) != reference  # order
    assert digest(images[:7]) != reference  # selection
    assert digest(images.double()) != reference  # the same values in another dtype
    assert digest(images.reshape(8, 1, 4, 16)) != reference  # the same bytes in another shape
    with pytest.raises(ValueError):
        digest(images[:4], images[4:].reshape(4, 1, 16, 4))


def test_feature_cache_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_GEN_CACHE", str(tmp_path))
    assert FeatureCache().root == tmp_path / "features"
