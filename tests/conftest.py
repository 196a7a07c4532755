from pathlib import Path

import pytest
import torch

from fake_data import write_fashion_mnist

# Engine tests run on every device this machine has: the CPU always, CUDA where present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> str:
    """A Fashion-MNIST folder (300 train / 150 test images) for --data-dir / DataConfig.data_dir."""
    return str(write_fashion_mnist(tmp_path_factory.mktemp("fmnist")))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each available device in turn ("cpu", and "cuda" on a machine with a GPU)."""
    return request.param


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache, used offline (HF_HUB_OFFLINE=1): fill it with hub_cache.cache_repo."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
