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
