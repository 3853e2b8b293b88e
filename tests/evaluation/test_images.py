"""Images: grids at the data's true levels, one row per class, PNGs in the data's mode, loggers' image APIs."""

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from lit_gen.evaluation import images


def test_grid_enlarges_small_images_without_inventing_levels(tmp_path):
    levels = torch.arange(4).float().div(3).view(1, 1, 2, 2).expand(3, 1, 2, 2).contiguous()
    images.save_image_grid(levels, tmp_path / "grid.png", min_side=8)
    image = Image.open(tmp_path / "grid.png")
    # 2 columns x (8 + padding) wide; pixel values only the four levels (as 8-bit) and the white padding
    assert image.size[0] == 2 * 8 + 3
    values = set(torch.tensor(list(image.convert("L").getdata())).tolist())
    assert values <= {0, 85, 170, 255}


def test_class_rows_put_one_class_per_row_with_full_rows():
    x = torch.arange(7).float().view(7, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])  # class 0 has one sample more: it is left out
    ordered, nrow = images.class_rows(x, labels)
    assert nrow == 2 and ordered.flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert images.class_rows(x, None) == (x, None)


def test_pngs_keep_the_data_mode_and_size():
    grey = torch.rand(1, 5, 7)
    pil = images.to_pil(grey)
    assert pil.mode == "L" and pil.size == (7, 5)
    assert np.array_equal(np.asarray(pil), grey[0].mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy())
    rgb = images.to_pil(torch.rand(3, 4, 4))
    assert rgb.mode == "RGB" and rgb.size == (4, 4)
    big = images.enlarge(grey, 3)
    assert big.shape == (1, 15, 21) and torch.equal(big[:, ::3, ::3], grey)


def test_each_logger_gets_the_grid_through_its_own_api():
    seen = {}
    tensorboard = SimpleNamespace(experiment=SimpleNamespace(add_image=lambda tag, img, step: seen.update(tb=(tag, step))))

    class Wandb:
        experiment = object()

        def log_image(self, key, images, step):
            seen["wandb"] = (key, images[0].size, step)

    csv = SimpleNamespace(experiment=SimpleNamespace(log_metrics=lambda *a: None))
    grid = torch.rand(3, 10, 12)
    took = images.log_image([tensorboard, Wandb(), csv], "val/samples", grid, 5)
    assert took == ["SimpleNamespace", "Wandb"]
    assert seen == {"tb": ("val/samples", 5), "wandb": ("val/samples", (12, 10), 5)}
