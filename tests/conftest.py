import pytest
import torch

# Tests are small; one thread keeps them from fighting over the two cores
# when pytest and a dvc subprocess run side by side.
torch.set_num_threads(1)


@pytest.fixture
def digits_params():
    from ocd.params import DataParams

    return DataParams(name="digits", seed=0)
