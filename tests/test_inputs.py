"""``ocd predict``'s input reading: every bad input is one line naming the file."""

import numpy as np
import pytest
from PIL import Image

from ocd.errors import InputError
from ocd.inputs import read_images, read_table

SHAPE = (1, 8, 8)


def test_good_npy_and_png_inputs_are_read(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 8, 8), 16.0))
    names, raw = read_images(tmp_path / "x.npy", SHAPE, 16.0)
    assert names == ["x.npy[0]", "x.npy[1]"] and raw.shape == (2, 1, 8, 8)
    (tmp_path / "pngs").mkdir()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "pngs" / "a.png")
    names, raw = read_images(tmp_path / "pngs", SHAPE, 16.0)
    assert names == ["a.png"] and raw.max() == 16.0


@pytest.mark.parametrize("content, message", [
    (np.array([["a", "b"]]), "holds <U1 values; expected an array of numbers"),
    (np.array([{"x": 1}], dtype=object), "not a readable .npy array of numbers"),
    (np.full((2, 8, 8), 1e30), r"values range over \[1e\+30, 1e\+30\]; the model's pixels lie in \[0, 16\]"),
    (np.full((2, 8, 8), np.nan), "NaN or infinite"),
    (np.zeros((2, 5, 5)), r"the model takes \(1, 8, 8\)"),
    (np.zeros((2, 8, 8), dtype=complex), "complex"),
])
def test_bad_npy_inputs_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(InputError, match=message) as err:
        read_images(path, SHAPE, 16.0)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_corrupted_png_and_odd_paths_name_the_file(tmp_path):
    (tmp_path / "pngs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "pngs" / "good.png")
    (tmp_path / "pngs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"broken.png: not a readable PNG image"):
        read_images(tmp_path / "pngs", SHAPE, 16.0)
    (tmp_path / "notnpy.npy").write_text("hello")
    with pytest.raises(InputError, match="notnpy.npy: not a .npy file") as err:  # not "pickled data" (issue 41)
        read_images(tmp_path / "notnpy.npy", SHAPE, 16.0)
    assert "pickle" not in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        read_images(tmp_path / "absent.npy", SHAPE, 16.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .png files"):
        read_images(tmp_path / "empty", SHAPE, 16.0)


def test_an_empty_array_images_of_other_sizes_and_a_huge_png_are_one_line(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8)))
    with pytest.raises(InputError, match=r"empty.npy holds no inputs \(shape \(0, 1, 8, 8\)\)"):
        read_images(tmp_path / "empty.npy", SHAPE, 16.0)
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(InputError, match=r"b.png is 10x12 pixels; the model takes 8x8 images"):
        read_images(tmp_path / "mixed", SHAPE, 16.0)
    # a 20000x20000 PNG (400 M pixels, a few hundred KB on disk): refused from its header
    (tmp_path / "huge").mkdir()
    Image.new("L", (20000, 20000)).save(tmp_path / "huge" / "h.png", optimize=False)
    with pytest.raises(InputError,
                       match=r"h.png: not a readable PNG image \(DecompressionBombError|h.png is 20000x20000"):
        read_images(tmp_path / "huge", SHAPE, 16.0)


def test_table_rows_are_read_raw_and_a_bad_table_names_its_problem(tmp_path):
    np.save(tmp_path / "rows.npy", np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]]))
    names, raw = read_table(tmp_path / "rows.npy", 3)
    assert names == ["rows.npy[0]", "rows.npy[1]"] and raw.shape == (2, 3) and np.isnan(raw[0, 1])
    np.save(tmp_path / "one.npy", np.array([1.0, 2.0, 3.0]))  # one row without its axis
    assert read_table(tmp_path / "one.npy", 3)[1].shape == (1, 3)
    with pytest.raises(InputError, match=r"rows.npy: rows of shape \(3,\); the model takes 4 raw features"):
        read_table(tmp_path / "rows.npy", 4)
    np.save(tmp_path / "inf.npy", np.array([[np.inf, 1.0, 2.0]]))
    with pytest.raises(InputError, match="inf.npy: infinite feature values"):
        read_table(tmp_path / "inf.npy", 3)
    (tmp_path / "rows.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="rows.csv: a table's rows are read from a .npy file"):
        read_table(tmp_path / "rows.csv", 3)
