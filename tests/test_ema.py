"""The exponential moving average of the weights."""

import pytest
import torch

from tests.helpers import small_net
from utils.train.ema import ModelEMA


def test_ema_ramps_up_and_tracks_batchnorm_statistics():
    net = small_net()
    ema = ModelEMA(net, decay=0.9999, tau=2000)
    assert ema.current_decay() == 0.0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    net(torch.rand(2, 3, 8, 8))  # moves the BN running statistics and num_batches_tracked
    ema.update(net)  # decay is still tiny: the EMA follows the model almost exactly
    for (name, a), b in zip(net.state_dict().items(), ema.ema.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), name
    ema.updates = 10**6
    assert ema.current_decay() == pytest.approx(0.9999)
    assert not any(p.requires_grad for p in ema.ema.parameters())
