import pytest
import torch

# Tiny models run fastest on one intra-op thread, and a second thread only contends on 2-core CI.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    from compactcl.data import load_dataset

    return load_dataset("digits")
