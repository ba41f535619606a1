"""Settings every test runs under, whatever ran before it."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each test runs on one torch CPU thread, restored afterwards: the tensors are tiny
    (extra threads only contend on a shared machine), the bit-identical comparisons need one
    reduction order, and a test (or a config's train.threads) that changes the thread count
    must not leak into the next test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded_global_rng():
    """torch's global generator starts from seed 0 in every test, so whatever a test still
    draws from it (module initialisation, mostly) does not depend on which tests ran before.
    Tests that need particular values use their own torch.Generator."""
    torch.manual_seed(0)
