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
