"""The U-Net backbone: shapes for every dataset, attention where asked, time and class inputs that matter."""

from __future__ import annotations

import pytest
import torch

from lit_gen.nn.unet import SelfAttention2d, SinusoidalEmbedding, UNet


@pytest.mark.parametrize("shape,attention", [((1, 8, 8), (4,)), ((1, 28, 28), (7,)), ((3, 32, 32), (16, 8))])
def test_output_has_the_input_shape_for_every_dataset(shape, attention):
    net = UNet(shape, num_classes=10, channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
               attention_resolutions=attention)
    x = torch.randn(2, *shape)
    out = net(x, torch.tensor([0.0, 999.0]), torch.tensor([3, 10]))
    assert out.shape == x.shape
    # blocks at each requested size (down and up) plus the middle one
    assert sum(isinstance(m, SelfAttention2d) for m in net.modules()) == 1 + len(attention) * (1 + 2)


def test_time_and_labels_change_the_output():
    torch.manual_seed(0)
    net = UNet((1, 8, 8), num_classes=10, channels=8, channel_mults=(1, 2), num_res_blocks=1)
    torch.nn.init.normal_(net.out[-1].weight)  # the output layer starts at zero
    x = torch.randn(1, 1, 8, 8)
    base = net(x, torch.tensor([10.0]), torch.tensor([1]))
    assert not torch.allclose(base, net(x, torch.tensor([500.0]), torch.tensor([1])))
    assert not torch.allclose(base, net(x, torch.tensor([10.0]), torch.tensor([10])))
    with pytest.raises(ValueError, match="labels"):
        net(x, torch.tensor([10.0]))


def test_a_fresh_unet_predicts_zero():
    net = UNet((1, 8, 8), channels=8, channel_mults=(1, 2), num_res_blocks=1)
    assert torch.equal(net(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])), torch.zeros(2, 1, 8, 8))


def test_sinusoidal_embedding_separates_timesteps():
    emb = SinusoidalEmbedding(32)(torch.arange(0, 1000, 7).float())
    assert emb.shape == (143, 32)
    distances = torch.cdist(emb, emb) + torch.eye(143) * 10
    assert distances.min() > 0.1


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet((1, 28, 28), channels=8, channel_mults=(1, 2, 2), attention_resolutions=(16,))
    with pytest.raises(ValueError, match="image data"):
        UNet((2,), channels=8)
