import torch

from ocd.hypernet.vecnet import PRESETS, Block, VecNet


def test_shapes_for_every_preset():
    for config in PRESETS.values():
        net = VecNet(10, config)
        out = net(torch.randn(3, 10), torch.randn(3, config.emb_dim))
        assert out.shape == (3, 10)


def test_a_fresh_block_passes_its_input_through():
    block = Block(8, 4)
    h = torch.randn(5, 8)
    torch.testing.assert_close(block(h, torch.randn(5, 4)), h)


def test_the_embedding_steers_the_output():
    # two embeddings, two targets: only a net that uses e can fit both
    torch.manual_seed(0)
    net = VecNet(3, PRESETS["tiny"])
    e = torch.eye(2).repeat(1, PRESETS["tiny"].emb_dim // 2)
    x, target = torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, -1.0]])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        loss = ((net(x, e) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_a_vector_wider_than_the_net_passes_around_it_and_a_linear_map_of_it_is_learned():
    """Issue 43: the flat target's 3,072 numbers went through a 256-wide net with no path around it, so the
    denoiser could not even learn the schedule's linear guess (held-out loss 0.815 against 0.630 for it).
    A net narrower than its vector has a path around it, x times a gain set by the embedding, starting at 0."""
    config = PRESETS["tiny"]  # width 32
    assert VecNet(32, config).skip is None  # as wide as the net: as before, the same parameters
    torch.manual_seed(0)
    x, e = torch.randn(256, 96), torch.randn(1, config.emb_dim).expand(256, -1)
    fits = {}
    for around in (True, False):
        net = VecNet(96, config)
        if not around:
            net.skip = None
        else:  # a fresh net is the map it would be without the path
            torch.testing.assert_close(net(x, e), _without_skip(net)(x, e))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(300):
            loss = ((net(x, e) - 0.5 * x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        fits[around] = loss.item()
    # through 32 numbers alone, at best a third of 0.5 x is kept: the loss stays near 0.25 * 64 / 96
    assert fits[True] < 0.01 < 0.1 < fits[False]


def _without_skip(net: VecNet) -> VecNet:
    import copy

    bare = copy.deepcopy(net)
    bare.skip = None
    return bare


def test_a_checkpoint_of_another_denoiser_is_refused_by_name(tmp_path, monkeypatch):
    """A flat denoiser saved before the skip path lacks its weights: one line that says what to rerun."""
    import pytest
    from synthetic import SHAPE, synthetic_store

    from ocd.artifacts import CheckpointError
    from ocd.delta import COND
    from ocd.hypernet import conditioning, diffusion, vecnet
    from ocd.store import ChunkReader

    monkeypatch.setitem(vecnet.PRESETS, "tiny", vecnet.VecNetConfig(width=8, depth=1, channels=8))
    root = synthetic_store(tmp_path / "s.zarr")
    stats = conditioning.cond_stats(ChunkReader(root["train"], ("delta", "u", "rho", *COND), list(range(4))))
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="flat")
    model = diffusion.build(meta, stats)
    assert model.net.skip is not None  # 24 numbers through an 8-wide net
    model.net.skip = None
    diffusion.save(tmp_path / "old.pt", model, stats, {})
    with pytest.raises(CheckpointError, match=r"old.pt: its weights do not fit .*; rerun train_diffusion"):
        diffusion.load(tmp_path / "old.pt")
