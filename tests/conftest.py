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
