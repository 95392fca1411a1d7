"""Score networks and ScoreModel: exact conversions against the analytic mixture, backbone shapes
and per-sample independence at every supported size, and the bad-input matrix."""

import pytest
import torch

import _cases
from sde_diffusion import VESDE, VPSDE, GaussianMixture, random_mixture
from sde_diffusion.models import MLPScore, ScoreModel, UNet, build_model, convert

SDES = _cases.sdes()  # every registered SDE
IDS = _cases.sde_ids(SDES)
# float64 conversions of O(1) quantities lose a few ulps per operation; at t >= 0.05 the
# divisions by s(t) >= 0.02 (VE: s >= 0.01) and m(t) >= 8e-3 amplify that by < 1e3: 1e-9 is ample.
TOL = dict(rtol=1e-9, atol=1e-9)


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised output layers random weights so outputs depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not bool(p.any()):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def _inputs(sde, n=64, dim=6, seed=0):
    gm = random_mixture(dim=dim, components=3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + (sde.T - 0.05) * torch.rand(n, generator=g, dtype=torch.float64)
    m, s = sde.marginal(t)
    x = m[:, None] * gm.sample(n, g, dtype=torch.float64) + s[:, None] * torch.randn(n, dim, generator=g,
                                                                                      dtype=torch.float64)
    return gm, x, t, m[:, None], s[:, None]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_every_parameterization_recovers_the_exact_score(sde):
    """Oracle nets predicting the mixture's exact eps, score, x0 (= Tweedie's (x + s^2 score)/m) or
    v = m eps - s x0 give, through ScoreModel, the mixture's exact score, eps = -s score, x0 and v."""
    gm, x, t, m, s = _inputs(sde)
    score = gm.score_at(x, t, sde)
    eps, x0 = -s * score, (x + s**2 * score) / m
    oracles = {"eps": gm.eps(sde), "score": gm.score(sde),
               "x0": lambda x, t: (x + s**2 * gm.score_at(x, t, sde)) / m,
               "v": lambda x, t: -m * s * gm.score_at(x, t, sde) - s * (x + s**2 * gm.score_at(x, t, sde)) / m}
    for kind, net in oracles.items():
        model = ScoreModel(net, sde, kind)
        torch.testing.assert_close(model.score(x, t), score, **TOL)
        torch.testing.assert_close(model(x, t), score, **TOL)
        torch.testing.assert_close(model.eps(x, t), eps, **TOL)
        torch.testing.assert_close(model.x0(x, t), x0, **TOL)
        torch.testing.assert_close(model.predict(x, t, kind="v"), m * eps - s * x0, **TOL)


def _edm_oracle(gm, sde, x, t, sd):
    """The net F that makes EDM's D(x_ve; sigma) = c_skip x_ve + c_out F(c_in x_ve, c_noise) the exact
    denoiser E[x_0 | x_t] (Tweedie), transcribed from Karras et al. 2022, Table 1 (not the package's
    ``edm_scalings``). It checks that it is called with c_in x_ve and c_noise = t."""
    m, s = (v[:, None] for v in sde.marginal(t))
    sigma = s / m
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2) ** 0.5
    c_in = 1 / (sigma**2 + sd**2) ** 0.5
    x0 = (x + s**2 * gm.score_at(x, t, sde)) / m

    def net(inp, c_noise):
        torch.testing.assert_close(inp, c_in * x / m, **TOL)
        torch.testing.assert_close(c_noise, t, rtol=0, atol=0)
        return (x0 - c_skip * x / m) / c_out
    return net


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("sd", [0.5, 1.3])
def test_edm_with_the_exact_denoiser_gives_the_exact_score(sde, sd):
    """EDM preconditioning around the mixture's exact denoiser reproduces the exact score, eps and x0,
    equal to what the eps-, score- and x0-oracles give (test above), to float64 rounding."""
    gm, x, t, m, s = _inputs(sde)
    score = gm.score_at(x, t, sde)
    model = ScoreModel(_edm_oracle(gm, sde, x, t, sd), sde, "edm", sigma_data=sd).double()
    torch.testing.assert_close(model.score(x, t), score, **TOL)
    torch.testing.assert_close(model.eps(x, t), -s * score, **TOL)
    torch.testing.assert_close(model.x0(x, t), (x + s**2 * score) / m, **TOL)
    torch.testing.assert_close(model.predict(x, t), model.x0(x, t), rtol=0, atol=0)  # edm predicts x0


def test_edm_sigma_zero_is_the_identity_and_sigma_data_is_saved():
    """At s = 0 (VE, t = 0) c_skip = 1 and c_out = 0: x0 = x exactly, whatever the net returns; the
    data std is a buffer, so a state_dict carries it into a freshly built model."""
    sde = VESDE()
    model = build_model("mlp", sde, parameterization="edm", sigma_data=0.7, dim=2, hidden=8).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(model.x0(x, 0.0), x, rtol=0, atol=0)
    fresh = build_model("mlp", sde, parameterization="edm", dim=2, hidden=8).double()
    fresh.load_state_dict(model.state_dict())
    assert float(fresh.sigma_data) == pytest.approx(0.7)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_weighting_is_the_mse_of_the_net_output(sde):
    """dsm_loss(weighting="edm") per sample = mean_d (F - F_target)^2 with F_target = (x0 - c_skip x_ve)
    / c_out (Karras et al. 2022, eq. 8), written out from Table 1 here."""
    from sde_diffusion.losses import dsm_loss
    torch.manual_seed(0)
    sd = 0.8
    model = build_model("mlp", sde, parameterization="edm", sigma_data=sd, dim=3, hidden=16).double()
    _randomize(model.net)
    g = torch.Generator().manual_seed(3)
    x0, z = torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)
    t = 0.01 + (sde.T - 0.01) * torch.rand(32, generator=g, dtype=torch.float64)
    m, s = (v[:, None] for v in sde.marginal(t))
    xt, sigma = m * x0 + s * z, s / m
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2) ** 0.5
    F = model.net(xt / m / (sigma**2 + sd**2) ** 0.5, t)
    want = (F - (x0 - c_skip * xt / m) / c_out).square().mean(1)
    got = dsm_loss(model, x0, weighting="edm", t=t, noise=z, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_x0_is_the_posterior_mean():
    """For a single Gaussian N(mu, v I): E[x_0 | x_t] = mu + m v / (m^2 v + s^2) (x - m mu), which the
    x0 view of the exact score must reproduce (an independent check of x0 = (x + s^2 score) / m)."""
    sde, mu, v = VPSDE(), torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), 0.3
    gm = GaussianMixture(mu, v)
    _, x, t, m, s = _inputs(sde, dim=3)
    posterior_mean = mu + m * v / (m**2 * v + s**2) * (x - m * mu)
    torch.testing.assert_close(ScoreModel(gm.score(sde), sde, "score").x0(x, t), posterior_mean, **TOL)


def test_convert_round_trips_and_formulas():
    """convert(convert(v, a, b), b, a) = v for all pairs, and the three named formulas."""
    g = torch.Generator().manual_seed(1)
    x, v = (torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    m, s = 0.2 + torch.rand(5, generator=g, dtype=torch.float64), 0.2 + torch.rand(5, generator=g,
                                                                                  dtype=torch.float64)
    kinds = ("eps", "score", "x0")
    for a in kinds:
        for b in kinds:
            torch.testing.assert_close(convert(convert(v, a, b, x, m, s), b, a, x, m, s), v, **TOL)
    M, S = m[:, None, None, None], s[:, None, None, None]
    torch.testing.assert_close(convert(v, "eps", "score", x, m, s), -v / S, **TOL)
    torch.testing.assert_close(convert(v, "eps", "x0", x, m, s), (x - S * v) / M, **TOL)
    torch.testing.assert_close(convert(v, "score", "x0", x, m, s), (x + S**2 * v) / M, **TOL)


def test_float_and_tensor_time_agree_and_input_scaling():
    """t as a float equals t as a (N,) tensor; with input_scaling the net sees x / sqrt(m^2 + s^2)."""
    sde, seen = VESDE(), []
    model = ScoreModel(lambda x, t: seen.append(x) or x, sde, "eps", input_scaling=True)
    x = torch.randn(4, 2, dtype=torch.float64)
    a, b = model.eps(x, 0.5), model.eps(x, torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    m, s = sde.marginal(torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(seen[0], x / (m**2 + s**2).sqrt(), **TOL)


def test_classifier_free_guidance_combines_conditional_and_null():
    """conditional(y, w) = (1 + w) score(x, t, y) - w score(x, t, null); w = 0 is the conditional score."""
    sde = VPSDE()
    net = _randomize(MLPScore(3, hidden=16, blocks=1, num_classes=4)).double()
    model = ScoreModel(net, sde, "eps")
    x, t, y = torch.randn(5, 3, dtype=torch.float64), 0.4, torch.tensor([0, 1, 2, 3, 0])
    cond, null = model.score(x, t, y), model.score(x, t, torch.full_like(y, 4))
    torch.testing.assert_close(model.conditional(y, 2.0)(x, t), 3 * cond - 2 * null, **TOL)
    torch.testing.assert_close(model.conditional(y)(x, t), cond, **TOL)
    # y = None means the null label
    torch.testing.assert_close(model.score(x, t), null, **TOL)
    assert not torch.allclose(cond, null)


UNET_CASES = [  # (image_size, in_channels, channel_mults, attention_resolutions)
    (8, 1, (1, 2), (4,)),
    (28, 1, (1, 2, 2), (7,)),
    (32, 3, (1, 2, 2), (8,)),
]


@pytest.mark.parametrize("size,channels,mults,attn", UNET_CASES, ids=["8x8", "28x28", "32x32"])
@pytest.mark.parametrize("num_classes", [None, 10], ids=["uncond", "labels"])
def test_unet_shapes_and_per_sample_independence(size, channels, mults, attn, num_classes):
    """Output shaped like x; sample k's output is the same alone or in a batch (GroupNorm and
    attention act per sample), up to float32 rounding; labels and time change the output."""
    torch.manual_seed(0)
    net = _randomize(UNet(channels, base_channels=16, channel_mults=mults, attention_resolutions=attn,
                          num_classes=num_classes, image_size=size)).eval()
    x, t = torch.randn(3, channels, size, size), torch.tensor([0.1, 0.5, 0.9])
    y = None if num_classes is None else torch.tensor([0, 9, 10])  # 10 = the null label
    out = net(x, t, y)
    assert out.shape == x.shape
    alone = net(x[1:2], t[1:2], None if y is None else y[1:2])
    torch.testing.assert_close(out[1:2], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net(x, t.flip(0), y), out)
    if num_classes is not None:
        assert not torch.allclose(net(x, t, torch.tensor([1, 8, 3])), out)


def test_unet_attention_where_asked_and_small_by_default():
    """Attention at the listed sizes only (plus the middle); the default model is small."""
    net = UNet(image_size=28, channel_mults=(1, 2, 2), attention_resolutions=(7,))
    attn_levels = [any(type(a).__name__ == "Attention" for a in level.attn) for level in net.down]
    assert attn_levels == [False, False, True]  # sizes 28, 14, 7
    assert sum(p.numel() for p in UNet().parameters()) < 1_000_000
    assert sum(p.numel() for p in MLPScore(2).parameters()) < 1_000_000


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_mlp_shapes_float64_and_weights_carry_the_embedding(embedding):
    """MLPScore maps (N, D) to (N, D) in float64; the Fourier frequencies are a buffer, so loading
    a state_dict into a differently seeded net reproduces its outputs exactly."""
    torch.manual_seed(0)
    a = _randomize(MLPScore(5, hidden=32, blocks=2, embedding=embedding)).double()
    torch.manual_seed(1)
    b = MLPScore(5, hidden=32, blocks=2, embedding=embedding).double()
    x, t = torch.randn(7, 5, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    out = a(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x, t), out, rtol=0, atol=0)
    torch.testing.assert_close(a(x[2:3], t[2:3]), out[2:3], rtol=1e-12, atol=1e-12)


def test_unet_float64():
    net = _randomize(UNet(base_channels=8, attention_heads=2)).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = net(x, torch.tensor([0.2, 0.7], dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(net(x[:1], torch.tensor([0.2], dtype=torch.float64)), out[:1],
                               rtol=1e-12, atol=1e-12)


def test_build_model_passes_options():
    model = build_model("unet", VPSDE(), parameterization="x0", base_channels=8, channel_mults=[1, 2],
                        attention_heads=2, num_classes=3)
    assert isinstance(model, ScoreModel) and model.parameterization == "x0" and model.num_classes == 3
    assert isinstance(model.net, UNet)
    assert isinstance(build_model("mlp", VPSDE(), dim=2, hidden=8).net, MLPScore)


@pytest.mark.parametrize("call,match", [
    (lambda: build_model("resnet", VPSDE()), "unknown model kind 'resnet'; allowed: mlp, unet"),
    (lambda: build_model("mlp", VPSDE(), dim=2, width=3), "unknown option.*width.*allowed: dim, hidden"),
    (lambda: ScoreModel(MLPScore(2), VPSDE(), "w"), "unknown parameterization 'w'; allowed: eps, score, x0, v"),
    (lambda: ScoreModel(MLPScore(2), "vp"), "sde must be an SDE"),
    (lambda: ScoreModel(MLPScore(2), VPSDE(), "edm", sigma_data=0.0), "sigma_data must be a finite number > 0"),
    (lambda: ScoreModel(MLPScore(2), VPSDE(), "edm", input_scaling=True), "input_scaling is part of the edm"),
    (lambda: MLPScore(2, embedding="rff"), "unknown embedding 'rff'"),
    (lambda: MLPScore(2, emb_dim=63), "emb_dim must be even"),
    (lambda: MLPScore(2)(torch.randn(4, 3), torch.rand(4)), r"x must have shape \(N, 2\)"),
    (lambda: MLPScore(2)(torch.randn(4, 2), torch.rand(3)), r"t must be a float or a tensor of shape \(4,\)"),
    (lambda: MLPScore(2)(torch.randn(4, 2), torch.rand(4), torch.zeros(4, dtype=torch.long)),
     "labels y were given to an unconditional network"),
    (lambda: MLPScore(2, num_classes=3)(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 4])),
     r"labels y must lie in 0..3"),
    (lambda: MLPScore(2, num_classes=3)(torch.randn(2, 2), torch.rand(2), torch.tensor([0.0, 1.0])),
     "y must be a LongTensor"),
    (lambda: UNet()(torch.randn(2, 1, 28, 28), torch.rand(2)), r"x must have shape \(N, 1, 8, 8\)"),
    (lambda: UNet(base_channels=8, attention_heads=3), "attention_heads .3. must divide"),
    (lambda: UNet(channel_mults=()), "channel_mults must be a non-empty tuple"),
    (lambda: ScoreModel(MLPScore(2), VPSDE())(torch.randn(3, 2), 1.5), r"t must lie in \[0, T\]"),
    (lambda: ScoreModel(lambda x, t: x[:, :1], VPSDE())(torch.randn(3, 2), 0.5),
     "net must return a tensor shaped like x"),
    (lambda: ScoreModel(MLPScore(2), VPSDE()).conditional(torch.zeros(2, dtype=torch.long)),
     "needs a net built with num_classes"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
