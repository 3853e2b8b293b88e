"""lit-gen FID vs torch_fidelity.calculate_metrics on the same images: value, speed, and caching.

Goals: relative FID difference <= 1e-3; lit-gen time / torch-fidelity time <= 1.1; second lit-gen
evaluation (real features from FeatureCache) / first <= 0.5.

On a GPU (``--device cuda``) both run there; lit-gen's value is also computed on the CPU and with cuDNN's
default TF32 convolutions (lit-gen turns TF32 off for the Inception network; torch-fidelity does not), to
show what that switch changes.

    python benchmarks/fid_vs_torch_fidelity.py --num 200 --image-size 32
    python benchmarks/fid_vs_torch_fidelity.py --num 1000 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from bench_common import cpu_model, synchronize


def waves(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    """'Real' set: smooth sinusoidal patterns, uint8 (n, c, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(n, c, 1, 1, generator=g) * 4 + 1
    phase = torch.rand(n, c, 1, 1, generator=g) * 6.28
    img = 0.5 + 0.45 * torch.sin(freq * (xx + yy) * 6.28 + phase)
    return (img * 255).round().to(torch.uint8)


def blobs(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    """'Fake' set: a colored disc on a complementary background with noise, uint8 (n, c, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = torch.rand(2, n, 1, 1, 1, generator=g) * size
    radius = torch.rand(n, 1, 1, 1, generator=g) * size / 3 + 2
    color = torch.rand(n, c, 1, 1, generator=g)
    img = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, color, 1 - color)
    img = img + 0.1 * torch.rand(n, c, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


class Uint8Images(torch.utils.data.Dataset):
    """torch-fidelity's input format: a Dataset of uint8 (3, H, W) tensors."""

    def __init__(self, images: torch.Tensor):
        self.images = images if images.shape[1] == 3 else images.repeat(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200, help="images per set (real and fake)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternated repeats; the minimum time is kept")
    ap.add_argument("--weights", default=None, help="Inception weights: .pth state dict or TorchScript .pt")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torch-fidelity's cuda=True uses 'cuda')")
    args = ap.parse_args()

    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from lit_gen.evaluation.features import InceptionFeatures, resolve_inception_weights
    from lit_gen.evaluation.metrics import FeatureCache, fid

    print(f"machine: {cpu_model()} | {os.cpu_count()} logical cores | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) | torch-fidelity {torch_fidelity.__version__} | "
          f"python {platform.python_version()}")
    n, c, s = args.num, args.channels, args.image_size
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    print(f"images: {n} real (waves) vs {n} fake (blobs), {c}x{s}x{s}, batch {args.batch_size}, {device}")

    weights = resolve_inception_weights(args.weights)
    print(f"weights: {weights}")
    real_u8, fake_u8 = waves(n, c, s, seed=0), blobs(n, c, s, seed=1)
    real_f, fake_f = real_u8.float() / 255, fake_u8.float() / 255  # lit-gen takes float [0, 1] images

    # Warm-up outside every timed region (oneDNN kernel selection, lazy imports), so neither side pays it.
    warm = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    ).to(device)
    with torch.no_grad():
        warm(Uint8Images(real_u8)[0:2].to(device))
    synchronize(args.device)
    del warm

    def run_torch_fidelity() -> float:
        """Builds its extractor, extracts both sets, computes FID (no disk cache)."""
        return torch_fidelity.calculate_metrics(
            input1=Uint8Images(fake_u8),
            input2=Uint8Images(real_u8),
            fid=True,
            feature_extractor_weights_path=str(weights),
            batch_size=args.batch_size,
            cuda=gpu,
            verbose=False,
            cache=False,
            save_cpu_ram=True,  # in-memory data: no DataLoader worker processes, like lit-gen
        )["frechet_inception_distance"]

    def run_lit_gen(net: InceptionFeatures | None, cache: FeatureCache) -> tuple[float, InceptionFeatures]:
        """One evaluation as a training loop does it: real features from the cache when present."""
        if net is None:  # the first evaluation in a process builds the network, as torch-fidelity does
            net = InceptionFeatures(weights).to(device)
        key = cache.key("bench-waves", "all", net.extractor_id, n, size=s, channels=c)
        real = cache.load(key)
        if real is None:
            real = net(real_f, batch_size=args.batch_size)
            cache.save(key, real)
        return fid(real, net(fake_f, batch_size=args.batch_size)), net

    def timed(fn, *a):
        w, p = time.perf_counter(), time.process_time()
        out = fn(*a)
        synchronize(args.device)
        return out, time.perf_counter() - w, time.process_time() - p

    # Alternate the three runs and keep each one's minimum: other load on a shared machine only adds time.
    t_tf, t_first, t_second = [], [], []  # (wall, cpu) per repeat
    for _ in range(args.repeats):
        ref, *t = timed(run_torch_fidelity)
        t_tf.append(t)
        with tempfile.TemporaryDirectory() as tmp:
            cache = FeatureCache(tmp)
            (ours, net), *t = timed(run_lit_gen, None, cache)  # cold: build + real + fake
            t_first.append(t)
            (ours2, _), *t = timed(run_lit_gen, net, cache)  # real features from the cache
            t_second.append(t)
            assert (cache.misses, cache.hits) == (1, 1)

    rel = abs(ours - ref) / abs(ref)
    mark = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    print(f"{'':30s}{'lit-gen':>12s}{'torch-fidelity':>16s}")
    print(f"{'FID':30s}{ours:12.6f}{ref:16.6f}   rel diff {rel:.2e} (goal <= 1e-3: {mark(rel <= 1e-3)})")
    for i, kind in enumerate(("wall", "cpu")):
        tf, first, second = (min(t[i] for t in ts) for ts in (t_tf, t_first, t_second))
        ratio, cached = first / tf, second / first
        print(f"{f'{kind} time, cold (s)':30s}{first:12.2f}{tf:16.2f}   "
              f"lit-gen/torch-fidelity {ratio:.3f} (goal <= 1.1: {mark(ratio <= 1.1)})")
        print(f"{f'{kind} time, real cached (s)':30s}{second:12.2f}{'':16s}   "
              f"second/first {cached:.3f} (goal <= 0.5: {mark(cached <= 0.5)})")
    print(f"second evaluation FID {ours2:.6f} (must equal the first: {mark(ours2 == ours)}); "
          f"times are the min over {args.repeats} alternated repeat(s); cpu = this process's CPU seconds")
    if gpu:
        # The same lit-gen FID three ways: float32 on the CPU (the reference), cuDNN's TF32 default on the GPU.
        on_cpu = fid(*(InceptionFeatures(weights)(x, batch_size=args.batch_size) for x in (real_f, fake_f)))
        net.allow_tf32 = True
        tf32 = fid(*(net(x, batch_size=args.batch_size) for x in (real_f, fake_f)))
        for name, value in (("lit-gen on the GPU", ours), ("torch-fidelity on the GPU", ref),
                            ("lit-gen on the GPU with TF32 convs", tf32)):
            print(f"{name:36s} {value:.6f}  rel diff to lit-gen on the CPU ({on_cpu:.6f}): "
                  f"{abs(value - on_cpu) / abs(on_cpu):.2e}")


if __name__ == "__main__":
    main()
