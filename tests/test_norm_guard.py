"""The running-statistics guard: catches every hidden BatchNorm, trusts types not names."""
import pytest
import torch
from torch import nn

from dp_runtime.errors import BatchNormError
from dp_runtime.model import (ResNet18GN, assert_no_running_stats, replace_bn_with_gn, running_stats_keys,
                              running_stats_layers)


class Deep(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), inner))


class HandRolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(4))
        self.register_buffer("running_var", torch.ones(4))


@pytest.mark.parametrize("layer,kind", [
    (nn.BatchNorm1d(8), "BatchNorm1d"),
    (nn.BatchNorm2d(8), "BatchNorm2d"),
    (nn.BatchNorm3d(8), "BatchNorm3d"),
    (nn.SyncBatchNorm(8), "SyncBatchNorm"),
    (nn.LazyBatchNorm2d(), "LazyBatchNorm2d"),
    (nn.InstanceNorm2d(8, track_running_stats=True), "InstanceNorm2d"),
    (HandRolled(), "HandRolled"),
])
def test_guard_catches_hidden_running_stats(layer, kind):
    model = Deep(layer)
    found = running_stats_layers(model)
    assert found == [("stage.1.1", kind)]
    with pytest.raises(BatchNormError) as e:
        assert_no_running_stats(model)
    assert "stage.1.1" in str(e.value) and "EMA" in str(e.value) and "running statistics" in str(e.value)


def test_instance_norm_without_tracking_and_groupnorm_named_bn_pass():
    model = ResNet18GN(base_width=16)
    assert isinstance(model.bn1, nn.GroupNorm)  # torchvision name, GroupNorm type
    model.extra = nn.InstanceNorm2d(4)  # no running stats
    assert running_stats_layers(model) == []
    assert_no_running_stats(model)


def test_replace_bn_with_gn_converts_everything_in_place():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32),
                          nn.Sequential(nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64)))
    assert len(running_stats_layers(model)) == 2
    out = replace_bn_with_gn(model, features_per_group=16)
    assert out is model
    assert running_stats_layers(model) == []
    assert isinstance(model[1], nn.GroupNorm) and model[1].num_groups == 2
    assert model[2][1].num_groups == 4


def test_resnet_keys_are_torchvision_names():
    keys = set(ResNet18GN(base_width=64).state_dict())
    for k in ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.bias",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer4.1.conv2.weight"]:
        assert k in keys
    with_fc = ResNet18GN(base_width=64, feature_dim=10)
    assert with_fc.fc.weight.shape == (10, 512)


def test_state_dict_keys_betray_batchnorm_whatever_the_name():
    keys = ["enc.norm_a.weight", "enc.norm_a.running_mean", "enc.norm_a.running_var",
            "enc.norm_a.num_batches_tracked", "unet.x.weight"]
    assert running_stats_keys(keys) == [("enc.norm_a", "state-dict buffer running_mean")]
