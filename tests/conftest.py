import pytest
import torch

# Tests are small; one thread keeps them from fighting over the two cores
# when pytest and a dvc subprocess run side by side.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def params_yaml(tmp_path_factory):
    """params.yaml as committed, in a file of its own: no test reads the working copy, which
    `dvc exp run` without --temp leaves holding its experiment's values (issue 44)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True, text=True)
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(shown.stdout if shown.returncode == 0 else (root / "params.yaml").read_text())
    return path


@pytest.fixture
def digits_params():
    from ocd.params import DataParams

    return DataParams(name="digits", seed=0)


# The device lane: tests that take the `device` fixture run on the CPU and, where
# one is present, on CUDA. On a machine without a GPU the CUDA cases are
# skipped with this reason (pytest -ra prints it); on a GPU machine pytest runs both.
NO_CUDA = "no CUDA device here: the CUDA lane runs on a GPU machine (../shared/gpu/README.md)"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
