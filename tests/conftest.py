import pytest
import torch

from minisd.data import load_dataset


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run on 2 shared cores; more threads than that only slows tiny models down.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", "test")
