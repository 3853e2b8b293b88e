"""The latent protocol (VAE, flow, GAN): ``sample`` is ``decode_latents(draw_latents(...))`` draw for draw,
which is what makes a row of ``predict``'s interpolations start at the sample of the same seed."""

import pytest
import torch

from lit_gen.cli import LitGenCLI
from lit_gen.core.seeds import ExampleGenerators
from tests.conftest import TINY_FAMILIES


def build(family: str):
    config, tiny = TINY_FAMILIES[family]
    return LitGenCLI(args=["--config", str(config), *tiny, "--trainer.logger=false"], run=False).model.eval()


@pytest.mark.parametrize("family,knobs", [("vae", {"temperature": 0.7, "decode": "sample"}),
                                          ("flow", {"temperature": 0.8}), ("gan", {"truncation": 1.5})])
def test_sample_is_decode_of_drawn_latents(family, knobs):
    model = build(family)
    assert model.has_latents
    with torch.no_grad():
        expected = model.sample(4, generator=ExampleGenerators(3, range(4)), **knobs)
        generators = ExampleGenerators(3, range(4))
        z = model.draw_latents(4, generator=generators, **knobs)
        again = model.decode_latents(z, generator=generators, **knobs)
    assert torch.equal(again, expected)


def test_families_without_latents_say_so():
    model = build("diffusion")
    assert not model.has_latents
    with pytest.raises(NotImplementedError, match="no latent space"):
        model.draw_latents(2)
