import dataclasses

import torch
from torch import nn

from dsearch import build_model, preset
from dsearch.data import load_dataset
from dsearch.training.proxy import DeviceData, ProxyConfig, memory_format, recompute_bn_stats, train_proxy


def _small_data():
    data = load_dataset()
    return DeviceData(data, torch.device("cpu"), train_subset=512)


def test_recomputed_bn_statistics_are_the_plain_average_over_clean_batches():
    data = _small_data()
    torch.manual_seed(0)
    model = build_model(preset("mobilenet_v2", width=0.35, in_channels=1, num_classes=10, resolution=28))
    model = model.to(memory_format=memory_format(data.device))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen[mod].append(args[0].detach().double()))
             for m in norms]
    recompute_bn_stats(model, data, batches=3, batch_size=64, seed=5)
    for h in hooks:
        h.remove()
    assert not model.training and all(m.momentum == 0.1 for m in norms)  # left as found, in eval mode
    for m in norms:
        batches = seen[m]
        assert len(batches) == 3
        # the truth: each batch's mean and unbiased variance per channel, averaged over the batches
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
        variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in batches]).mean(0)
        torch.testing.assert_close(m.running_mean.double(), means, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var.double(), variances, rtol=1e-4, atol=1e-5)


def test_bn_recompute_changes_only_the_statistics_not_the_training():
    data = _small_data()
    spec = preset("mobilenet_v2", width=0.35, in_channels=1, num_classes=10, resolution=28)
    cfg = ProxyConfig(epochs=1, batch_size=64, seed=3)
    plain = train_proxy(spec, data, cfg)
    recomputed = train_proxy(spec, data, dataclasses.replace(cfg, bn_recompute=4))
    assert plain.state is not None and recomputed.state is not None
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in plain.state.items():
        if key.endswith(stats):
            continue
        torch.testing.assert_close(recomputed.state[key], value, rtol=0, atol=0)
    assert any(not torch.equal(recomputed.state[k], plain.state[k]) for k in plain.state if k.endswith("running_var"))
