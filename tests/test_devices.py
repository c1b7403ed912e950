"""The device lane: every computation that runs on the library's device, on each
device present, against the same computation on the CPU.

Tolerance. On the CPU the results must be identical (a seeded run repeats
bit for bit). On CUDA: relative error (norm of the difference over the norm of
the CPU result) at most CUDA_RTOL = 2e-3. Two sources justify that bound:
float32 sums in another order (~1e-6 relative), and cuDNN convolutions in
TF32 (torch's default for convolutions: a 10-bit mantissa, ~1e-3 relative on
a convolution's output), which feed the cut layer of LeNet5. Random draws are
made on the CPU and moved, so both devices see the same noise.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import SHAPE, synthetic_store

from ocd.delta import COND
from ocd.device import Compute, Steps, adam
from ocd.evaluation import EvalInputs, evaluate
from ocd.hypernet import conditioning, diffusion, regressor, scale, targets
from ocd.layers import perturbation_losses
from ocd.models import base
from ocd.models.cut import linear_cut
from ocd.models.registry import ModelSpec
from ocd.models.sequential import lenet5
from ocd.overfit import overfit_batch
from ocd.params import BaseParams, ComputeParams, DiffusionParams, RegressorParams, ScaleParams
from ocd.store import ChunkReader
from ocd.tasks import get_task

TASK = get_task("classification")
CUDA_RTOL = 2e-3


def assert_matches(got, ref, device, rtol=CUDA_RTOL, what=""):
    got, ref = torch.as_tensor(got).detach().cpu().double(), torch.as_tensor(ref).detach().cpu().double()
    assert got.shape == ref.shape, what
    if device.type == "cpu":
        assert torch.equal(got, ref), f"{what}: the CPU run does not repeat"
    else:
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
        assert err <= rtol, f"{what}: relative error {err:.2e} on {device} (bound {rtol:g})"


def _lenet():
    torch.manual_seed(0)
    return lenet5((1, 28, 28), 10).eval()


def test_the_library_looks_up_no_device_and_makes_no_generator_of_its_own():
    """Issue 42, item 7: the device comes from the entry point's ocd.device.Compute and every
    seeded torch generator from ocd.device.generator; nowhere else in ocd/ or stages/."""
    root = Path(__file__).resolve().parents[1]
    sources = [path for folder in ("ocd", "stages") for path in (root / folder).rglob("*.py")
               if path.name != "device.py" and not path.is_symlink()]  # stages/deps/ links to ocd/
    found = [f"{path.relative_to(root)}: {needle}" for path in sources for needle in ("get_device(", "torch.Generator(")
             if needle in path.read_text()]
    assert not found


def test_the_base_model_trains_and_predicts_on_the_device_its_caller_names(device):
    params = BaseParams(epochs=2, batch_size=8, lr=1e-3, seed=3)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

    def run(dev):
        torch.manual_seed(0)
        model = lenet5((1, 28, 28), 10)
        history = base.train(model, TASK, x, y, params, progress=False, compute=Compute(torch.device(dev)))
        assert next(model.parameters()).device.type == torch.device(dev).type
        return history, base.predict(model, x, compute=Compute(torch.device(dev)))

    (ref_history, ref_out), (history, out) = run("cpu"), run(device)
    assert out.device.type == "cpu"  # predictions come back on the CPU
    assert_matches(history, ref_history, device, what="loss per epoch")
    assert_matches(out, ref_out, device, rtol=2e-2, what="outputs")


@pytest.mark.parametrize("layer, optimizer, lr", [("fc1", "adam", 5e-4), ("fc2", "sgd", 0.05)])
def test_overfit_on_each_device(device, layer, optimizer, lr):
    model = _lenet()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def run(m, dev):
        cut = linear_cut(m.to(dev), layer)
        with torch.no_grad():
            h = cut.enter(x.to(dev))
        return overfit_batch(cut, TASK, h, y.to(dev), steps=3, optimizer=optimizer, lr=lr)

    ref, got = run(copy.deepcopy(model), "cpu"), run(copy.deepcopy(model), device)
    assert got.delta.device.type == device.type
    assert_matches(got.delta, ref.delta, device, what="delta")
    assert_matches(got.loss_after, ref.loss_after, device, what="loss_after")


def test_a_training_step_replayed_as_a_cuda_graph_matches_the_step_as_written(device):
    def trained(graphs):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1)).to(device)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss.detach()

        runner = Steps(step, device, graphs=graphs)
        opt = adam(net.parameters(), 1e-2, runner.graphs)
        gen = torch.Generator().manual_seed(1)
        losses = [runner(torch.randn(32, 6, generator=gen).to(device), torch.randn(32, 1, generator=gen).to(device))
                  for _ in range(20)]
        return runner, torch.stack(losses), torch.cat([p.detach().flatten() for p in net.parameters()])

    runner, losses, weights = trained(graphs=True)
    _, ref_losses, ref_weights = trained(graphs=False)
    assert (runner.graph is not None) == (device.type == "cuda")  # graphs on CUDA only
    assert len(set(losses.tolist())) == 20  # every replay computed its own step
    assert_matches(losses, ref_losses, device, what="losses")
    assert_matches(weights, ref_weights, device, what="weights")


def test_compute_graphs_trains_the_denoiser_and_scale_model_as_without(tmp_path, device):
    _, reader, stats = _store(tmp_path)
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="matrix", basis="sign")

    def trained(graphs):
        torch.manual_seed(0)
        model, scaler = diffusion.build(meta, stats), scale.ScaleModel(stats, [16], 1.0)
        _, history = diffusion.train(model, reader,
                                     DiffusionParams(steps=12, epochs=0, batch_size=16, lr=3e-3, ema=0.9),
                                     ComputeParams(graphs=graphs), device=device, progress=False)
        history += scale.train(scaler, reader, ScaleParams(loss="logmse", steps=12, epochs=0, batch_size=16, lr=1e-2),
                               ComputeParams(graphs=graphs), device, progress=False)
        return [v for _, v in history]

    assert_matches(trained(graphs=True), trained(graphs=False), device, what="losses")


def test_perturbation_losses_on_each_device(device):
    model = _lenet()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    ref = perturbation_losses(copy.deepcopy(model), TASK, "fc2", x, y, draws=64, noise=0.1, seed=0)
    got = perturbation_losses(copy.deepcopy(model).to(device), TASK, "fc2", x.to(device), y.to(device),
                              draws=64, noise=0.1, seed=0)
    assert got.device.type == "cpu"  # results come back to the CPU
    assert_matches(got, ref, device, what="losses")


def _store(tmp_path):
    root = synthetic_store(tmp_path / "s.zarr", rank_one="sign")
    reader = ChunkReader(root["train"], ("delta", "u", "rho", *COND), list(range(4)))
    return root, reader, conditioning.cond_stats(reader)


@pytest.mark.parametrize("target", ["matrix", "rank1"])
def test_diffusion_training_and_sampling_on_each_device(tmp_path, device, target):
    _, reader, stats = _store(tmp_path)
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target=target, basis="sign")
    torch.manual_seed(0)
    model = diffusion.build(meta, stats)
    ema, history = diffusion.train(model, reader, DiffusionParams(steps=30, epochs=0, batch_size=16, lr=3e-3, ema=0.9),
                                   ComputeParams(), device=device, progress=False)
    assert all(np.isfinite(v) for _, v in history)
    assert next(ema.parameters()).device.type == device.type
    # the same weights sample the same deltas on either device (noise drawn on the CPU)
    data = reader.read(reader.chunks)
    cpu_model = copy.deepcopy(ema).cpu()
    _, parts, _ = targets.batch_tensors(data, meta, "cpu")
    ref = cpu_model.sample(cpu_model.embed(parts), steps=5, generator=torch.Generator().manual_seed(1))
    dev_parts = [p.to(device) for p in parts]
    got = ema.sample(ema.embed(dev_parts), steps=5, generator=torch.Generator().manual_seed(1))
    assert_matches(got, ref, device, what="sampled targets")
    diag_ref = diffusion.diagnose(cpu_model, data, 5, 0.0, 0, 16, "cpu")
    diag = diffusion.diagnose(ema, data, 5, 0.0, 0, 16, device)
    assert_matches([diag["denoise_loss"], diag["cosine_mean"]], [diag_ref["denoise_loss"], diag_ref["cosine_mean"]],
                   device, what="diagnostics")


def test_scale_and_regressor_on_each_device(tmp_path, device):
    _, reader, stats = _store(tmp_path)
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="rank1", basis="sign")
    torch.manual_seed(0)
    scaler = scale.ScaleModel(stats, [16], scale.mean_rho(reader))
    hist = scale.train(scaler, reader, ScaleParams(loss="logmse", steps=50, epochs=0, batch_size=16, lr=1e-2),
                       ComputeParams(), device, progress=False)
    reg = regressor.DeltaRegressor(meta, stats, [16])
    reg_hist = regressor.train(reg, reader, RegressorParams(steps=50, epochs=0, batch_size=16, lr=1e-2),
                               ComputeParams(), device, progress=False)
    assert all(np.isfinite(v) for _, v in hist + reg_hist)
    assert hist[-1][1] < hist[0][1] and reg_hist[-1][1] < reg_hist[0][1]
    data = reader.read(reader.chunks)
    ref = scale.diagnose(copy.deepcopy(scaler).cpu(), data, 1.0, "cpu")
    got = scale.diagnose(scaler, data, 1.0, device)
    assert_matches(got["median_rel_error"], ref["median_rel_error"], device, what="scale error")
    ref = regressor.diagnose(copy.deepcopy(reg).cpu(), data, "cpu")
    got = regressor.diagnose(reg, data, device)
    assert_matches(got["cosine_mean"], ref["cosine_mean"], device, what="regressor cosine")


def test_the_evaluation_table_on_each_device(tmp_path, device):
    root, reader, stats = _store(tmp_path)
    torch.manual_seed(0)
    # fc2 of this MLP has the synthetic store's weight shape (4, 6) and input width 6
    spec = ModelSpec("mlp", (6,), 2, {"hidden": [6, 4], "dropout": 0.0})
    model, member = spec.build().eval(), spec.build().eval()
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="rank1", basis="sign")
    tensor = lambda name, split="train": torch.as_tensor(root[split][name][:])  # noqa: E731
    inputs = EvalInputs(
        model=model, layer="fc2", task=TASK, x_test=torch.randn(8, 6), y_test=torch.randint(0, 2, (8,)),
        x_train=torch.randn(64, 6), train_delta=tensor("delta"), train_parts=[tensor(n) for n in COND],
        oracle_delta=tensor("delta", "test"), diff=diffusion.build(meta, stats),
        scaler=scale.ScaleModel(stats, [8], 1.0), mean_rho=1.0, regressor=regressor.DeltaRegressor(meta, stats, [8]),
        x_cal=torch.randn(16, 6), y_cal=torch.randint(0, 2, (16,)))

    def table(inp, members):
        with torch.no_grad():
            rows, plots, _ = evaluate(inp, 2, 3, 0.0, 0, [1, 2], 1e-3, members)
        for r in rows:  # the loss split adds up to the row's loss
            assert r.metrics["loss_base_right"] + r.metrics["loss_base_wrong"] == pytest.approx(r.metrics["ce"])
        return {r.name: [v for v in (*r.metrics.values(), r.cosine, r.scale_error) if v is not None]
                for r in rows}, plots

    ref, ref_plots = table(copy.deepcopy(inputs), [copy.deepcopy(member)])
    got, plots = table(copy.deepcopy(inputs).to(device), [copy.deepcopy(member).to(device)])
    assert set(got) == set(ref) and {"deep_ensemble_2", "tent_2", "temperature", "ocd_temperature", "knn_temperature",
                                     "knn", "ocd_lambda", "regressor_lambda", "knn_lambda"} <= set(got)
    for key in ("knn", "lambda"):  # the calibration rows choose alike on every device
        assert plots["chosen"][key] == ref_plots["chosen"][key], key
    assert set(plots["reliability"]) == {"base", "ocd", "temperature", "ocd_temperature", "knn_temperature",
                                       "deep_ensemble"}
    for name in ref:
        assert_matches(got[name], ref[name], device, what=name)
    assert_matches(plots["rho"]["predicted"], ref_plots["rho"]["predicted"], device, what="delta norms")
