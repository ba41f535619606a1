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


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No test sees the real cache, $BIOSSL_DATA, system dirs, or the network (data tests
    opt in with ``pytestmark = pytest.mark.usefixtures("isolated_data")``)."""
    from biossl.data import fetch, locate
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOSSL_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", (tmp_path / "system",))

    def no_network(url, timeout=30.0):
        raise RuntimeError(f"test tried to use the network: {url}")

    monkeypatch.setattr(fetch, "open_url", no_network)
