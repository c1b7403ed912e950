import dataclasses

import numpy as np
import pytest
import torch
import zarr

from ocd.delta import BASIS_OF_OPTIMIZER, StoreError, rank_one_factor
from ocd.models.cut import linear_cut
from ocd.models.sequential import lenet5
from ocd.overfit import fill_store
from ocd.store import DERIVED, FORMAT_VERSION, DeltaStore, Layout, open_store, summarize, verify
from ocd.tasks import get_task

TASK = get_task("classification")
FINGERPRINT = {"base_sha256": "abc", "layer": "fc1", "overfit": {"steps": 3}}


class Interrupt(Exception):
    pass


def _setup():
    torch.manual_seed(0)
    model = lenet5((1, 28, 28), 10).eval()
    cut = linear_cut(model, "fc1")
    splits = {"train": (torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))),
              "test": (torch.randn(7, 1, 28, 28), torch.randint(0, 10, (7,)))}
    layout = Layout(n={"train": 20, "test": 7}, out_features=84, in_features=120, n_outputs=10,
                    chunk=8, dtype="float32")
    return cut, splits, layout


def _fill(path, fingerprint=FINGERPRINT, stop_after=None, log=None, optimizer="adam", lr=5e-4, writers=1):
    cut, splits, layout = _setup()
    layout = dataclasses.replace(layout, rank1_basis=BASIS_OF_OPTIMIZER[optimizer])
    messages = log if log is not None else []
    store = DeltaStore.create_or_resume(path, layout, fingerprint, {"layer": "fc1"}, log=messages.append)
    written = []

    def on_chunk(split, rows):
        written.append((split, rows))
        if stop_after is not None and len(written) >= stop_after:
            raise Interrupt

    fill_store(store, cut, TASK, splits, steps=3, optimizer=optimizer, lr=lr, rho="fro", on_chunk=on_chunk,
               writers=writers)
    return store, written


def _arrays(path):
    root = zarr.open_group(path, mode="r")
    return {f"{s}/{name}": node[:] for s in ("train", "test")
            for name, node in root[s].members(max_depth=None) if isinstance(node, zarr.Array)}


def test_a_stranger_can_open_the_store_with_plain_zarr(tmp_path):
    _fill(tmp_path / "s.zarr")
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert root.attrs["layer"] == "fc1" and root.attrs["format_version"] == FORMAT_VERSION
    assert "never input" in root["test"].attrs["role"]
    assert root["train/delta"].shape == (20, 84, 120) and root["train/delta"].chunks == (8, 84, 120)
    assert root["train/cond/layer_input"].shape == (20, 120)
    assert root["train/cond/layer_activation"].shape == (20, 84)
    assert root["test/cond/output"].shape == (7, 10)
    assert root["train/index"][:].tolist() == list(range(20))
    delta = root["train/delta"][:]
    np.testing.assert_allclose(root["train/rho"][:], np.linalg.norm(delta.reshape(20, -1), axis=1), rtol=1e-5)
    # the activation is the ReLU of the layer's output
    assert (root["train/cond/layer_activation"][:] >= 0).all()
    open_store(tmp_path / "s.zarr")  # complete: accepted


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    _fill(tmp_path / "whole.zarr")
    with pytest.raises(Interrupt):
        _fill(tmp_path / "cut.zarr", stop_after=2)
    with pytest.raises(StoreError, match="unfinished chunks"):
        open_store(tmp_path / "cut.zarr")
    log = []
    _, written = _fill(tmp_path / "cut.zarr", log=log)
    assert "resuming" in log[0] and "train 2/3 chunks" in log[0]
    assert sum(rows for _, rows in written) == 27 - 16  # only the missing rows were computed
    whole, resumed = _arrays(tmp_path / "whole.zarr"), _arrays(tmp_path / "cut.zarr")
    assert whole.keys() == resumed.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], resumed[key], err_msg=key)


def test_several_writer_threads_write_the_store_one_writer_writes(tmp_path):
    _fill(tmp_path / "one.zarr")
    _, written = _fill(tmp_path / "three.zarr", writers=3)
    assert sorted(written) == sorted([("train", 8), ("train", 8), ("train", 4), ("test", 7)])
    one, three = _arrays(tmp_path / "one.zarr"), _arrays(tmp_path / "three.zarr")
    assert one.keys() == three.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], three[key], err_msg=key)
    open_store(tmp_path / "three.zarr")


def test_a_store_of_another_base_model_is_rebuilt_not_extended(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(Interrupt):
        _fill(path, stop_after=1)
    log = []
    _, written = _fill(path, fingerprint=dict(FINGERPRINT, base_sha256="other"), log=log)
    assert "rebuilding" in log[0] and "base_sha256 was 'abc', now 'other'" in log[0]
    assert sum(rows for _, rows in written) == 27
    assert zarr.open_group(path, mode="r").attrs["fingerprint"]["base_sha256"] == "other"


def test_on_a_plain_sgd_store_the_rank_one_factor_rebuilds_every_delta(tmp_path):
    # plain gradient steps on one sample add g_t i_L^T with i_L fixed: delta = u i_L^T exactly
    _fill(tmp_path / "s.zarr", optimizer="sgd", lr=0.05)
    root = open_store(tmp_path / "s.zarr")
    for split in ("train", "test"):
        g = root[split]
        delta, u, x = g["delta"][:], g["u"][:], g["cond/layer_input"][:]
        assert np.abs(delta).max() > 1e-4
        rebuilt = u[:, :, None] * x[:, None, :]
        np.testing.assert_allclose(rebuilt, delta, rtol=0, atol=1e-6 * np.abs(delta).max())
        np.testing.assert_allclose(g["rank1_share"][:], 1.0, atol=1e-5)


def test_adam_deltas_are_rank_one_in_the_sign_of_the_input(tmp_path):
    # Adam divides each entry m_i h_j by its RMS sqrt(v_i) |h_j|: delta ~ u sign(h)^T
    _fill(tmp_path / "s.zarr")
    g = open_store(tmp_path / "s.zarr")["train"]
    assert zarr.open_group(tmp_path / "s.zarr", mode="r").attrs["rank1_basis"] == "sign"
    delta, u, x = g["delta"][:], g["u"][:], g["cond/layer_input"][:]
    assert g["rank1_share"][:].min() > 0.99
    rebuilt = u[:, :, None] * np.sign(x)[:, None, :]
    assert np.linalg.norm(rebuilt - delta) < 0.05 * np.linalg.norm(delta)
    _, share_input = rank_one_factor(delta, x)  # the plain-gradient basis explains less here
    assert share_input.mean() < g["rank1_share"][:].mean() - 0.01


def test_rank_one_factor_share_of_a_matrix_that_is_not_rank_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    u_true = rng.normal(size=(3, 4)).astype(np.float32)
    noise = rng.normal(size=(3, 4, 5)).astype(np.float32)
    noise -= np.einsum("boi,bi->bo", noise, x)[:, :, None] * x[:, None, :] / (x**2).sum(1)[:, None, None]
    delta = u_true[:, :, None] * x[:, None, :] + noise  # noise is orthogonal to every v x^T
    u, share = rank_one_factor(delta, x)
    np.testing.assert_allclose(u, u_true, atol=1e-4)
    expected = (u_true**2).sum(1) * (x**2).sum(1) / (delta**2).sum((1, 2))
    np.testing.assert_allclose(share, expected, rtol=1e-4)
    with pytest.raises(StoreError, match="right factors"):
        rank_one_factor(delta, x[:, :4])


def test_open_store_names_an_old_format(tmp_path):
    _fill(tmp_path / "s.zarr")
    zarr.open_group(tmp_path / "s.zarr", mode="r+").attrs["format_version"] = 1
    with pytest.raises(StoreError, match=f"format 1, this code reads format {FORMAT_VERSION}; rerun the overfit stage"):
        open_store(tmp_path / "s.zarr")


def test_an_attribute_edited_by_hand_is_named_refused_and_rebuilt(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path)
    clean = _arrays(path)
    zarr.open_group(path, mode="r+").attrs["layer"] = "fc2"  # the chunks still say fc1
    zarr.open_group(path, mode="r+")["test"].attrs["role"] = "training data"
    found = [str(d) for d in verify(zarr.open_group(path, mode="r"))]
    assert found == [f"attribute {name}: does not match its seal: edited after the overfit run wrote the store, "
                     "so its chunks may not be what it says" for name in ("layer", "test/role")]
    with pytest.raises(StoreError, match=r"2 damaged chunk\(s\) or attribute\(s\): attribute layer: .*dvc repro"):
        open_store(path)
    log = []
    _, written = _fill(path, log=log)  # the stage's resume: a store whose attributes lie is rebuilt
    assert any(m.startswith(f"rebuilding {path}: its attributes layer, test/role were edited") for m in log)
    assert written == [("train", 8), ("train", 8), ("train", 4), ("test", 7)]
    assert zarr.open_group(path, mode="r").attrs["layer"] == "fc1"
    open_store(path)
    for name, values in _arrays(path).items():
        np.testing.assert_array_equal(values, clean[name], err_msg=name)


def test_a_small_table_gets_chunks_small_enough_to_hold_some_out():
    from ocd.store import chunk_rows, split_chunks

    assert chunk_rows(3600, 256) == 256  # mnist5k: the batch size, as before
    chunk = chunk_rows(113, 256)  # wine's train rows: one chunk of 256 left no room for a held-out slice
    n_chunks = -(-113 // chunk)
    fit, held = split_chunks(n_chunks, 0.1)
    assert (chunk, n_chunks, len(fit), len(held)) == (12, 10, 9, 1)
    assert chunk_rows(3, 256) == 1 and chunk_rows(0, 256) == 1


def test_nan_rows_are_refused_with_the_split_and_rows(tmp_path):
    _, _, layout = _setup()
    store = DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, FINGERPRINT, {}, log=lambda m: None)
    rows = {name: np.zeros((8, *shape), dtype) for name, (shape, dtype) in layout.arrays().items()
            if name not in DERIVED}
    rows["rho"][3] = np.nan
    with pytest.raises(StoreError, match=r"train/rho has NaN.*(rows 0..7)"):
        store.write_chunk("train", 0, rows)
    assert store.pending_chunks("train") == [0, 1, 2]


def test_open_store_refuses_missing_and_foreign_paths(tmp_path):
    with pytest.raises(StoreError, match="run the overfit stage"):
        open_store(tmp_path / "absent.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a weight-delta store"):
        open_store(tmp_path / "other.zarr")


def test_summary_reports_rank_one_share_and_losses(tmp_path):
    _fill(tmp_path / "s.zarr")
    s = summarize(tmp_path / "s.zarr")
    train = s["splits"]["train"]
    assert train["n"] == 20 and train["rows_done"] == 20 and train["chunks_done"] == "3/3"
    assert 0.5 < train["rank_one_share"]["mean"] <= 1.0
    # u i_L^T is one rank-one matrix, so it explains no more than the best one
    assert 0.5 < train["rank1_share"]["mean"] <= train["rank_one_share"]["mean"] + 1e-6
    assert train["loss_after"]["mean"] < train["loss_before"]["mean"]
    # delta: uncompressed, checksummed; the small arrays: zstd, checksummed
    assert train["arrays"]["delta"]["compressors"] == ["Crc32cCodec"]
    assert train["arrays"]["rho"]["compressors"] == ["ZstdCodec", "Crc32cCodec"]
    assert s["attrs"]["layer"] == "fc1"


def _truncate(f):
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])


def _flip_bit(f, at=100):
    data = bytearray(f.read_bytes())
    data[at % len(data)] ^= 0x10
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_bit, lambda f: f.unlink()], ids=["truncate", "bit-flip", "delete"])
def test_damaged_chunks_are_named_refused_by_readers_and_recomputed_on_resume(tmp_path, damage):
    path = tmp_path / "s.zarr"
    _fill(path)
    clean = _arrays(path)
    damage(path / "train/delta/c/1/0/0")  # rows 8..15 of the deltas
    damage(path / "test/rho/c/0")
    found = {(d.split, d.array, d.chunk) for d in verify(zarr.open_group(path, mode="r"))}
    assert found == {("train", "delta", 1), ("test", "rho", 0)}
    with pytest.raises(StoreError, match=r"2 damaged chunk\(s\) or attribute\(s\): .*chunk .*rows .*dvc repro overfit"):
        open_store(path)
    if damage is not _truncate and damage is not _flip_bit:  # a missing chunk reads as zeros: --verify finds it
        summarize(path)
    else:
        with pytest.raises(StoreError, match="cannot be read.*ocd inspect --verify"):
            summarize(path)

    log = []
    _, written = _fill(path, log=log)  # the stage's resume: recompute just those two chunks
    damaged = sorted(m for m in log if m.startswith("damaged: "))
    assert len(damaged) == 2
    assert damaged[0].startswith("damaged: test/rho chunk 0 (rows 0..6): ")
    assert damaged[1].startswith("damaged: train/delta chunk 1 (rows 8..15): ")
    assert written == [("train", 8), ("test", 7)]
    healed = _arrays(path)
    for name, values in clean.items():
        np.testing.assert_array_equal(healed[name], values, err_msg=name)
    open_store(path)


def test_a_damaged_done_flag_counts_as_not_done(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path)
    _flip_bit(path / "train/done/c/2", at=0)
    found = verify(zarr.open_group(path, mode="r"))
    assert [(d.split, d.array, d.chunk) for d in found] == [("train", "done", 2)]
    _, written = _fill(path)
    assert written == [("train", 4)]
    assert verify(zarr.open_group(path, mode="r")) == []


def test_a_chunk_of_fill_values_is_written_and_verifies(tmp_path):
    # a chunk whose labels are all 0 equals the fill value: Zarr skips such a chunk unless told
    # otherwise, and the store then reads as damaged (a few-shot text store: 2 rotten sentences)
    cut, splits, layout = _setup()
    x, _ = splits["test"]
    splits["test"] = (x, torch.zeros(7, dtype=torch.int64))
    store = DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, FINGERPRINT, {"layer": "fc1"}, log=lambda m: None)
    fill_store(store, cut, TASK, splits, steps=3, optimizer="adam", lr=5e-4, rho="fro")
    assert verify(zarr.open_group(tmp_path / "s.zarr", mode="r")) == []
    open_store(tmp_path / "s.zarr")


def test_a_negative_sample_is_a_bad_argument_not_a_damaged_store(tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    path = tmp_path / "s.zarr"
    _fill(path)
    with pytest.raises(ValueError, match="got -3"):
        summarize(path, sample=-3)
    result = CliRunner().invoke(app, ["inspect", str(path), "--sample", "-3"])
    assert result.exit_code == 2 and "--sample" in result.output and "damaged" not in result.output
    assert summarize(path, sample=0)["splits"]["train"]["rank_one_share"] == {}


def test_a_folder_that_is_not_a_store_is_refused_and_kept(tmp_path):
    cut, splits, layout = _setup()
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    with pytest.raises(StoreError, match="not a weight-delta store.*thesis.txt.*nothing was deleted"):
        DeltaStore.create_or_resume(folder, layout, FINGERPRINT, {}, log=lambda m: None)
    assert (folder / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no lock file left beside it
    # a Zarr group of someone else's, and a store with a file of the user's inside it
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["mine"] = 1
    with pytest.raises(StoreError, match="not a weight-delta store of this project"):
        DeltaStore.create_or_resume(tmp_path / "other.zarr", layout, FINGERPRINT, {}, log=lambda m: None)
    assert zarr.open_group(tmp_path / "other.zarr", mode="r").attrs["mine"] == 1
    _fill(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "notes.md").write_text("mine")
    with pytest.raises(StoreError, match="notes.md"):
        _fill(tmp_path / "s.zarr", fingerprint=dict(FINGERPRINT, base_sha256="other"))
    assert (tmp_path / "s.zarr" / "notes.md").exists() and (tmp_path / "s.zarr" / "train").is_dir()
    with pytest.raises(StoreError, match="not a folder"):
        (tmp_path / "file").write_text("x")
        DeltaStore.create_or_resume(tmp_path / "file", layout, FINGERPRINT, {}, log=lambda m: None)
    # a link to a store is named a link (issue 41: it was called "not a folder"), and nothing behind it moves
    (tmp_path / "link.zarr").symlink_to(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match=r"link.zarr is a symbolic link \(to .*s.zarr\).*nothing was deleted"):
        _fill(tmp_path / "link.zarr")
    assert (tmp_path / "s.zarr" / "notes.md").exists() and (tmp_path / "s.zarr" / "train").is_dir()


def test_a_store_with_an_unreadable_root_is_rebuilt(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path)
    (path / "zarr.json").write_text("")
    log = []
    _, written = _fill(path, log=log)
    assert "rebuilding" in log[0] and sum(rows for _, rows in written) == 27
    open_store(path)


def test_one_writer_at_a_time(tmp_path):
    cut, splits, layout = _setup()
    first = DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, FINGERPRINT, {}, log=lambda m: None)
    with pytest.raises(StoreError, match=r"another run is writing .*s.zarr \(pid \d+"):
        DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, dict(FINGERPRINT, base_sha256="B"), {},
                                    log=lambda m: None)
    assert zarr.open_group(tmp_path / "s.zarr", mode="r").attrs["fingerprint"]["base_sha256"] == "abc"
    first.close()
    DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, dict(FINGERPRINT, base_sha256="B"), {},
                                log=lambda m: None).close()


def test_a_lock_held_by_a_killed_process_is_not_stale(tmp_path):
    import subprocess
    import sys
    import time
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.zarr.lock")], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    cut, splits, layout = _setup()
    with pytest.raises(StoreError, match="another run is writing"):
        DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, FINGERPRINT, {}, log=lambda m: None)
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    DeltaStore.create_or_resume(tmp_path / "s.zarr", layout, FINGERPRINT, {}, log=lambda m: None).close()


def test_a_chunk_file_moved_to_another_index_is_found_and_recomputed(tmp_path):
    path = tmp_path / "s.zarr"
    _fill(path)
    before = _arrays(path)
    a, b = path / "train/delta/c/0/0/0", path / "train/delta/c/1/0/0"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)  # both valid chunk files, each with a good checksum
    found = {(d.split, d.array, d.chunk, "seal" in d.reason) for d in verify(zarr.open_group(path, mode="r"))}
    assert found == {("train", "delta", 0, True), ("train", "delta", 1, True)}
    with pytest.raises(StoreError, match="damaged chunk"):
        open_store(path)
    _, written = _fill(path)  # the resume recomputes the two chunks
    assert sum(rows for _, rows in written) == 16
    for key, values in _arrays(path).items():
        np.testing.assert_array_equal(values, before[key], err_msg=key)


def test_chunks_written_by_a_run_with_other_inputs_are_found(tmp_path):
    # the 2-rank kill of issue 30: ranks of an old run wrote their chunks into the rebuilt store
    old, new = tmp_path / "old.zarr", tmp_path / "new.zarr"
    _fill(old, fingerprint=dict(FINGERPRINT, overfit={"steps": 2}))
    _fill(new)
    for f in ("train/delta/c/2/0/0", "train/rho/c/2", "train/seal/c/2/0"):
        (new / f).write_bytes((old / f).read_bytes())  # the old run's chunk 2 and its seal, landed late
    found = {(d.array, d.chunk) for d in verify(zarr.open_group(new, mode="r"))}
    # the seal names the old run, so every array of that chunk is refused, and nothing else
    assert found == {(name, 2) for name in _setup()[2].arrays()}


def test_equal_rows_make_a_store_of_equal_bytes(tmp_path):
    # DVC hashes the store's files: a time or a path in them would make every rebuild a change
    import time

    _fill(tmp_path / "a.zarr")
    time.sleep(1.1)  # a timestamp of seconds would differ
    _fill(tmp_path / "b.zarr")
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    a, b = files(tmp_path / "a.zarr"), files(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [str(k) for k in a if a[k] != b.get(k)]
