import pytest
import torch

from napari_pgsr.models import build_model
from napari_pgsr.models.unet import UNet


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 37, 51), (1, 1, 5, 3)])
def test_any_frame_size_comes_back_with_its_size(shape):
    net = UNet(depth=2, width=4)
    assert net(torch.randn(shape)).shape == (shape[0], 1, *shape[2:])


def test_residual_network_starts_close_to_identity_and_context_channels():
    torch.manual_seed(0)
    net = UNet(in_channels=5, depth=1, width=4)
    x = torch.randn(1, 5, 16, 16)
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    torch.testing.assert_close(net(x), x[:, 2:3])  # the centre frame passes straight through


def test_bce_model_outputs_probabilities():
    net = UNet(depth=1, width=4, residual=False, output_activation="sigmoid")
    out = net.activate(net(torch.randn(2, 1, 16, 16) * 10))
    assert out.min() >= 0 and out.max() <= 1


def test_architecture_round_trip_and_errors():
    net = UNet(in_channels=3, depth=3, width=8)
    clone = build_model(net.architecture)
    assert clone.architecture == net.architecture
    assert sum(p.numel() for p in clone.parameters()) == sum(p.numel() for p in net.parameters())
    assert UNet(depth=2, width=32).receptive_field == 47


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_matches_the_gradient_footprint(depth):
    net = UNet(depth=depth, width=2)
    for p in net.parameters():  # positive weights: every path contributes, so the footprint is exact
        p.data.uniform_(0.1, 0.2)
    size = 8 * 2**depth + 64
    reach = 0
    for centre in range(size // 2, size // 2 + 2**depth):  # every phase of the pooling grid
        x = torch.zeros(1, 1, size, size, requires_grad=True)
        net(x + 1.0)[0, 0, centre, centre].backward()
        seen = torch.nonzero(x.grad[0, 0].abs().sum(0) > 0).flatten()
        reach = max(reach, centre - int(seen.min()), int(seen.max()) - centre)
    assert net.receptive_field == 2 * reach + 1
    with pytest.raises(ValueError, match="unknown model architecture 'stylegan'"):
        build_model({"name": "stylegan"})
    with pytest.raises(ValueError, match="depth, width and in_channels >= 1"):
        UNet(depth=0)


def test_default_unet_has_care_size():
    net = UNet()
    assert net.depth == 2 and net.width == 32
    assert 450_000 < sum(p.numel() for p in net.parameters()) < 500_000
