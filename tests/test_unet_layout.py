"""Our ConditionalUnet1D must load real-stanford/diffusion_policy state dicts strictly.

The reference key/shape list below is derived by hand from
diffusion_policy/model/diffusion/conditional_unet1d.py and conv1d_components.py
(ConditionalResidualBlock1D: blocks.{0,1}.block.{0 Conv1d,1 GroupNorm},
cond_encoder.1 Linear, residual_conv 1x1 when channels change; Downsample1d
Conv1d(dim, dim, 3); Upsample1d ConvTranspose1d(dim, dim, 4);
diffusion_step_encoder.{1,3} Linear; final_conv.0.block.0/1 and final_conv.1).
"""
import pytest
import torch

from dp_runtime.model import ConditionalUnet1D


def reference_keys(input_dim, gcond, dsed, down_dims, k, cps, local_cond_dim=None):
    shapes = {}
    shapes["diffusion_step_encoder.1.weight"] = (dsed * 4, dsed)
    shapes["diffusion_step_encoder.1.bias"] = (dsed * 4,)
    shapes["diffusion_step_encoder.3.weight"] = (dsed, dsed * 4)
    shapes["diffusion_step_encoder.3.bias"] = (dsed,)
    cond = dsed + gcond

    def res(prefix, i, o):
        for b, cin in ((0, i), (1, o)):
            shapes[f"{prefix}.blocks.{b}.block.0.weight"] = (o, cin, k)
            shapes[f"{prefix}.blocks.{b}.block.0.bias"] = (o,)
            shapes[f"{prefix}.blocks.{b}.block.1.weight"] = (o,)
            shapes[f"{prefix}.blocks.{b}.block.1.bias"] = (o,)
        co = o * 2 if cps else o
        shapes[f"{prefix}.cond_encoder.1.weight"] = (co, cond)
        shapes[f"{prefix}.cond_encoder.1.bias"] = (co,)
        if i != o:
            shapes[f"{prefix}.residual_conv.weight"] = (o, i, 1)
            shapes[f"{prefix}.residual_conv.bias"] = (o,)

    dims = [input_dim] + list(down_dims)
    in_out = list(zip(dims[:-1], dims[1:]))
    if local_cond_dim is not None:
        res("local_cond_encoder.0", local_cond_dim, in_out[0][1])
        res("local_cond_encoder.1", local_cond_dim, in_out[0][1])
    for n, (i, o) in enumerate(in_out):
        res(f"down_modules.{n}.0", i, o)
        res(f"down_modules.{n}.1", o, o)
        if n < len(in_out) - 1:
            shapes[f"down_modules.{n}.2.conv.weight"] = (o, o, 3)
            shapes[f"down_modules.{n}.2.conv.bias"] = (o,)
    res("mid_modules.0", dims[-1], dims[-1])
    res("mid_modules.1", dims[-1], dims[-1])
    for n, (i, o) in enumerate(reversed(in_out[1:])):
        res(f"up_modules.{n}.0", o * 2, i)
        res(f"up_modules.{n}.1", i, i)
        if n < len(in_out) - 1:
            shapes[f"up_modules.{n}.2.conv.weight"] = (i, i, 4)
            shapes[f"up_modules.{n}.2.conv.bias"] = (i,)
    s = down_dims[0]
    shapes["final_conv.0.block.0.weight"] = (s, s, k)
    shapes["final_conv.0.block.0.bias"] = (s,)
    shapes["final_conv.0.block.1.weight"] = (s,)
    shapes["final_conv.0.block.1.bias"] = (s,)
    shapes["final_conv.1.weight"] = (input_dim, s, 1)
    shapes["final_conv.1.bias"] = (input_dim,)
    return shapes


@pytest.mark.parametrize("cps", [False, True])
@pytest.mark.parametrize("local", [None, 3])
def test_reference_state_dict_loads_strict(cps, local):
    ref = reference_keys(10, 20, 32, [32, 64, 128], 5, cps, local)
    state = {k: torch.randn(v) for k, v in ref.items()}
    net = ConditionalUnet1D(10, local_cond_dim=local, global_cond_dim=20, diffusion_step_embed_dim=32,
                            down_dims=[32, 64, 128], kernel_size=5, n_groups=8, cond_predict_scale=cps)
    net.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 10)
    # The reference adds local features before the last upsample, so its forward only
    # works without local_cond; we keep its layout, and test the path it supports.
    out = net(x, torch.tensor([3, 7]), global_cond=torch.randn(2, 20))
    assert out.shape == (2, 16, 10)
    assert torch.isfinite(out).all()


def test_reference_default_size_matches_dp_cnn():
    """The DP-CNN default (256/512/1024, kernel 5) has the reference's parameter count."""
    ref = reference_keys(10, 2 * 522, 256, [256, 512, 1024], 5, True)
    net = ConditionalUnet1D(10, global_cond_dim=2 * 522, down_dims=[256, 512, 1024], kernel_size=5,
                            cond_predict_scale=True)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == ref


def test_timestep_forms_agree():
    torch.manual_seed(0)
    net = ConditionalUnet1D(4, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=[16, 32]).eval()
    x, g = torch.randn(1, 8, 4), torch.randn(1, 6)
    a = net(x, 5, global_cond=g)
    b = net(x, torch.tensor(5), global_cond=g)
    c = net(x, torch.tensor([5]), global_cond=g)
    assert torch.equal(a, b) and torch.equal(b, c)
