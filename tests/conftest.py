import pytest
import torch

from minisd.data import load_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    # Test models are tiny: a second thread buys nothing, and on busy cores small linalg
    # calls (Cholesky) become a thousand times slower with 2 threads than with 1.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", "test")
