"""Causal TAE: the official key/shape table (spec reference-model.md §7), parameter count, and the
encoder/decoder math against a plain re-derivation (F.pad + F.conv1d on the state-dict tensors)
in fp32 within 1e-5; logvar clamp, reparameterisation, input errors, config round trip."""
import pytest
import torch
import torch.nn.functional as F

from motionstreamer.models.tae import CausalHumanTAE, TAEConfig

TOL = dict(atol=1e-5, rtol=1e-5)

# Copied key by key from the spec's table (Causal_TAE/net_last.pth, key 'net'): 70 tensors.
OFFICIAL_TAE_TABLE = [
    ("tae.decode_proj.weight", (1024, 16)),
    ("tae.decode_proj.bias", (1024,)),
    ("tae.encoder.proj.weight", (32, 1024)),
    ("tae.encoder.proj.bias", (32,)),
    ("tae.encoder.model.0.conv.weight", (1024, 272, 3)),
    ("tae.encoder.model.0.conv.bias", (1024,)),
    ("tae.encoder.model.2.0.conv.weight", (1024, 1024, 4)),
    ("tae.encoder.model.2.0.conv.bias", (1024,)),
    ("tae.encoder.model.2.1.model.0.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.2.1.model.0.conv1.bias", (1024,)),
    ("tae.encoder.model.2.1.model.0.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.2.1.model.0.conv2.bias", (1024,)),
    ("tae.encoder.model.2.1.model.1.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.2.1.model.1.conv1.bias", (1024,)),
    ("tae.encoder.model.2.1.model.1.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.2.1.model.1.conv2.bias", (1024,)),
    ("tae.encoder.model.2.1.model.2.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.2.1.model.2.conv1.bias", (1024,)),
    ("tae.encoder.model.2.1.model.2.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.2.1.model.2.conv2.bias", (1024,)),
    ("tae.encoder.model.3.0.conv.weight", (1024, 1024, 4)),
    ("tae.encoder.model.3.0.conv.bias", (1024,)),
    ("tae.encoder.model.3.1.model.0.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.3.1.model.0.conv1.bias", (1024,)),
    ("tae.encoder.model.3.1.model.0.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.3.1.model.0.conv2.bias", (1024,)),
    ("tae.encoder.model.3.1.model.1.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.3.1.model.1.conv1.bias", (1024,)),
    ("tae.encoder.model.3.1.model.1.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.3.1.model.1.conv2.bias", (1024,)),
    ("tae.encoder.model.3.1.model.2.conv1.weight", (1024, 1024, 3)),
    ("tae.encoder.model.3.1.model.2.conv1.bias", (1024,)),
    ("tae.encoder.model.3.1.model.2.conv2.weight", (1024, 1024, 1)),
    ("tae.encoder.model.3.1.model.2.conv2.bias", (1024,)),
    ("tae.encoder.model.4.conv.weight", (1024, 1024, 3)),
    ("tae.encoder.model.4.conv.bias", (1024,)),
    ("tae.decoder.model.0.conv.weight", (1024, 1024, 3)),
    ("tae.decoder.model.0.conv.bias", (1024,)),
    ("tae.decoder.model.2.0.model.0.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.2.0.model.0.conv1.bias", (1024,)),
    ("tae.decoder.model.2.0.model.0.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.2.0.model.0.conv2.bias", (1024,)),
    ("tae.decoder.model.2.0.model.1.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.2.0.model.1.conv1.bias", (1024,)),
    ("tae.decoder.model.2.0.model.1.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.2.0.model.1.conv2.bias", (1024,)),
    ("tae.decoder.model.2.0.model.2.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.2.0.model.2.conv1.bias", (1024,)),
    ("tae.decoder.model.2.0.model.2.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.2.0.model.2.conv2.bias", (1024,)),
    ("tae.decoder.model.2.2.conv.weight", (1024, 1024, 3)),
    ("tae.decoder.model.2.2.conv.bias", (1024,)),
    ("tae.decoder.model.3.0.model.0.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.3.0.model.0.conv1.bias", (1024,)),
    ("tae.decoder.model.3.0.model.0.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.3.0.model.0.conv2.bias", (1024,)),
    ("tae.decoder.model.3.0.model.1.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.3.0.model.1.conv1.bias", (1024,)),
    ("tae.decoder.model.3.0.model.1.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.3.0.model.1.conv2.bias", (1024,)),
    ("tae.decoder.model.3.0.model.2.conv1.weight", (1024, 1024, 3)),
    ("tae.decoder.model.3.0.model.2.conv1.bias", (1024,)),
    ("tae.decoder.model.3.0.model.2.conv2.weight", (1024, 1024, 1)),
    ("tae.decoder.model.3.0.model.2.conv2.bias", (1024,)),
    ("tae.decoder.model.3.2.conv.weight", (1024, 1024, 3)),
    ("tae.decoder.model.3.2.conv.bias", (1024,)),
    ("tae.decoder.model.4.conv.weight", (1024, 1024, 3)),
    ("tae.decoder.model.4.conv.bias", (1024,)),
    ("tae.decoder.model.6.conv.weight", (272, 1024, 3)),
    ("tae.decoder.model.6.conv.bias", (272,)),
]


def test_official_key_table_and_parameter_count():
    with torch.device("meta"):
        tae = CausalHumanTAE(TAEConfig.official())
    sd = tae.state_dict()
    assert len(OFFICIAL_TAE_TABLE) == 70
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == OFFICIAL_TAE_TABLE   # same keys, shapes and order
    assert sum(v.numel() for v in sd.values()) == 76_203_312                     # "76.2M" in the spec


def plain_conv(h, sd, name, pad, stride=1, dilation=1):
    return F.conv1d(F.pad(h, (pad, 0)), sd[name + ".weight"], sd[name + ".bias"], stride=stride, dilation=dilation)


def plain_resnet(h, sd, prefix, dilations):
    for i, d in enumerate(dilations):
        r = F.relu(plain_conv(F.relu(h), sd, f"{prefix}.model.{i}.conv1", 2 * d, dilation=d))
        h = h + plain_conv(r, sd, f"{prefix}.model.{i}.conv2", 0)
    return h


def plain_encode(sd, x, clip=(-30.0, 20.0)):
    """The original CausalEncoder written out: (B, T, 272) -> mu, logvar (B, T/4, 16)."""
    e = "tae.encoder.model"
    h = F.relu(plain_conv(x.transpose(1, 2), sd, f"{e}.0.conv", 2))
    for s in (2, 3):
        h = plain_conv(h, sd, f"{e}.{s}.0.conv", 2, stride=2)     # k4 s2: pad (4-1)*1 + (1-2) = 2
        h = plain_resnet(h, sd, f"{e}.{s}.1", (9, 3, 1))
    h = plain_conv(h, sd, f"{e}.4.conv", 2).transpose(1, 2)
    out = h @ sd["tae.encoder.proj.weight"].T + sd["tae.encoder.proj.bias"]
    mu, logvar = out[..., :16], out[..., 16:]
    return mu, logvar.clamp(*clip)


def plain_decode(sd, z):
    """The original forward_decoder written out: (B, L, 16) -> (B, 4L, 272)."""
    d = "tae.decoder.model"
    h = (z @ sd["tae.decode_proj.weight"].T + sd["tae.decode_proj.bias"]).transpose(1, 2)
    h = F.relu(plain_conv(h, sd, f"{d}.0.conv", 2))
    for s in (2, 3):
        h = plain_resnet(h, sd, f"{d}.{s}.0", (9, 3, 1))
        h = h.repeat_interleave(2, dim=-1)                         # nearest 2x upsampling
        h = plain_conv(h, sd, f"{d}.{s}.2.conv", 2)
    h = F.relu(plain_conv(h, sd, f"{d}.4.conv", 2))
    return plain_conv(h, sd, f"{d}.6.conv", 2).transpose(1, 2)


@pytest.mark.parametrize("config", [TAEConfig.small(32), TAEConfig.official()], ids=["small", "official"])
def test_encode_decode_match_plain_rederivation(config):
    torch.manual_seed(0)
    tae = CausalHumanTAE(config).eval()
    sd = tae.state_dict()
    x = torch.randn(2, 80, 272)          # 20 latents: long enough for every dilated tap to see real frames
    with torch.no_grad():
        z, mu, logvar = tae.encode(x, sample=False)
        ref_mu, ref_logvar = plain_encode(sd, x)
        assert mu.shape == logvar.shape == z.shape == (2, 20, 16)
        torch.testing.assert_close(mu, ref_mu, **TOL)
        torch.testing.assert_close(logvar, ref_logvar, **TOL)
        assert torch.equal(z, mu)                                   # sample=False -> the mean
        lat = torch.randn(2, 12, 16)
        frames = tae.decode(lat)
        assert frames.shape == (2, 48, 272) and torch.isfinite(frames).all()
        torch.testing.assert_close(frames, plain_decode(sd, lat), **TOL)


def test_causality_future_frames_do_not_change_the_past():
    torch.manual_seed(1)
    tae = CausalHumanTAE(TAEConfig.small(32)).eval()
    x = torch.randn(1, 16, 272)
    x2 = x.clone()
    x2[:, 8:] = torch.randn(1, 8, 272)                              # change the last 2 latents' frames
    z = torch.randn(1, 4, 16)
    z2 = z.clone()
    z2[:, 2:] = 5.0
    with torch.no_grad():
        assert torch.equal(tae.encode(x, sample=False)[1][:, :2], tae.encode(x2, sample=False)[1][:, :2])
        assert torch.equal(tae.decode(z)[:, :8], tae.decode(z2)[:, :8])
        assert not torch.allclose(tae.decode(z)[:, 8:], tae.decode(z2)[:, 8:])


def test_reparameterisation_and_logvar_clamp():
    torch.manual_seed(2)
    tae = CausalHumanTAE(TAEConfig.small(32)).eval()
    x = torch.randn(3, 8, 272)
    with torch.no_grad():
        z, mu, logvar = tae.encode(x, generator=torch.Generator().manual_seed(7))
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(z, mu + eps * torch.exp(0.5 * logvar), atol=1e-6, rtol=1e-6)
        z_again, _, _ = tae.encode(x, generator=torch.Generator().manual_seed(7))
        assert torch.equal(z, z_again)                              # the generator makes it reproducible
        tae.tae.encoder.proj.bias[16:] = 1e4                        # logvar half of the projection
        assert torch.all(tae.encode(x, sample=False)[2] == 20.0)
        tae.tae.encoder.proj.bias[16:] = -1e4
        assert torch.all(tae.encode(x, sample=False)[2] == -30.0)
    clipped = CausalHumanTAE(TAEConfig(hidden=32, width=32, logvar_clip=(-1.0, 0.5))).eval()
    with torch.no_grad():
        clipped.tae.encoder.proj.bias[16:] = 100.0
        assert torch.all(clipped.encode(x, sample=False)[2] == 0.5)


def test_forward_returns_reconstruction_mu_logvar():
    tae = CausalHumanTAE(TAEConfig.small(32))
    x = torch.randn(2, 8, 272)
    g = torch.Generator().manual_seed(3)
    recon, mu, logvar = tae(x, generator=g)
    z, _, _ = tae.encode(x, generator=torch.Generator().manual_seed(3))
    assert recon.shape == x.shape and mu.shape == (2, 2, 16)
    torch.testing.assert_close(recon, tae.decode(z), **TOL)
    recon.sum().backward()                                          # trainable end to end
    assert tae.tae.encoder.model[0].conv.weight.grad is not None


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 10, 0])
def test_length_not_multiple_of_four_is_a_clear_error(frames):
    tae = CausalHumanTAE(TAEConfig.small(32))
    with pytest.raises(ValueError, match=f"length {frames} is not a positive multiple of 4"):
        tae.encode(torch.zeros(1, frames, 272))


def test_shape_errors_name_the_expected_layout():
    tae = CausalHumanTAE(TAEConfig.small(32))
    with pytest.raises(ValueError, match=r"\(batch, frames, 272\), got \(8, 272\)"):
        tae.encode(torch.zeros(8, 272))
    with pytest.raises(ValueError, match=r"\(batch, frames, 272\), got \(1, 8, 263\)"):
        tae.encode(torch.zeros(1, 8, 263))
    with pytest.raises(ValueError, match=r"\(batch, length, 16\), got \(1, 4, 8\)"):
        tae.decode(torch.zeros(1, 4, 8))


def test_config_round_trip_and_validation():
    c = TAEConfig(hidden=48, width=40, logvar_clip=(-5, 3), activation="silu")
    d = c.to_dict()
    assert d["logvar_clip"] == [-5.0, 3.0]
    assert TAEConfig.from_dict(d) == c
    assert TAEConfig.official() == TAEConfig() and TAEConfig.official().frames_per_latent == 4
    # hidden != width stays consistent: the latent projections use hidden, the convs width
    tae = CausalHumanTAE(c)
    assert tae.decode(torch.zeros(1, 2, 16)).shape == (1, 8, 272)
    assert tae.encode(torch.zeros(1, 8, 272))[0].shape == (1, 2, 16)
    with pytest.raises(ValueError, match="activation"):
        TAEConfig(activation="tanh")
    with pytest.raises(ValueError, match="unknown TAEConfig field"):
        TAEConfig.from_dict({**d, "norm": "LN"})
    with pytest.raises(ValueError, match="logvar_clip"):
        TAEConfig(logvar_clip=(1.0, -1.0))
