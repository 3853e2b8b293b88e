"""SampleWriter: what ``predict`` writes is the seeded request, whole, in order, whatever the chunk size."""

import lightning as L
import numpy as np
import torch
from PIL import Image

from lit_gen.core.seeds import ExampleGenerators
from lit_gen.datamodules.digits import DigitsDataModule
from lit_gen.evaluation.writer import SampleWriter
from lit_gen.models.factorized import FactorizedCategorical


def _model() -> FactorizedCategorical:
    model = FactorizedCategorical()
    with torch.no_grad():
        model.logits.normal_(generator=torch.Generator().manual_seed(0))
    return model


def _predict(tmp_path, name, model, chunk, num=10, seed=3, **writer_args):
    out = tmp_path / name
    data = DigitsDataModule(predict_num_samples=num, predict_seed=seed, eval_batch_size=chunk)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SampleWriter(output_dir=str(out), **writer_args)], default_root_dir=tmp_path)
    trainer.predict(model, datamodule=data, return_predictions=False)
    return out


def test_predict_writes_the_request_in_order_for_any_chunk_size(tmp_path):
    model = _model()
    first = _predict(tmp_path, "c4", model, chunk=4)
    second = _predict(tmp_path, "c3", model, chunk=3)
    a, b = np.load(first / "samples.npz"), np.load(second / "samples.npz")
    assert a["samples"].shape == (10, 1, 8, 8) and np.array_equal(a["samples"], b["samples"])
    for j in (0, 4, 9):  # sample j is drawn from seed + j alone
        alone = model.sample(1, generator=ExampleGenerators(3, [j]))
        assert np.array_equal(a["samples"][j], alone[0].numpy())
    assert np.array_equal(a["images"], np.floor(a["samples"] * 255 + 0.5).astype(np.uint8))
    assert sorted(p.name for p in (first / "samples").iterdir()) == [f"{j:06d}.png" for j in range(10)]
    assert not (first / "chunks").exists()
    png = np.asarray(Image.open(first / "samples" / "000004.png").convert("L"))
    assert np.array_equal(png, a["images"][4, 0])
    assert (first / "grid.png").is_file()


def test_chunks_left_by_an_interrupted_run_do_not_leak_in(tmp_path):
    out = tmp_path / "run"
    (out / "chunks").mkdir(parents=True)
    np.savez(out / "chunks" / "chunk_000099.npz", samples=np.zeros((5, 1, 8, 8), np.float32))
    _predict(tmp_path, "run", _model(), chunk=4)
    assert np.load(out / "samples.npz")["samples"].shape[0] == 10


def test_options_turn_outputs_off(tmp_path):
    out = _predict(tmp_path, "few", _model(), chunk=4, grid=False, individual=False)
    assert (out / "samples.npz").is_file() and not (out / "grid.png").exists() and not (out / "samples").exists()
