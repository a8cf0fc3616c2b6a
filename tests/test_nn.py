"""pyconv.nn, pyconv.optim and pyconv.summary.

Backward passes are checked against float64 central finite differences on small
shapes (random real inputs, so max-pool ties and ReLU kinks are not hit); when torch is
importable the same networks with the same weights are compared against torch layer by
layer, and the optimisers against torch.optim.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import pyconv
from pyconv import nn, optim

F64 = np.float64


# ------------------------------------------------------------------ helpers


def numgrad(f, x, eps=1e-6, points=None, seed=0):
    """Central differences of the scalar f() with respect to the array x (perturbed in
    place and restored). With `points`, only that many randomly chosen entries are
    differentiated and the rest are NaN (assert_close skips NaN entries of the reference)."""
    g = np.full(x.shape, np.nan) if points is not None else np.zeros(x.shape)
    flat = x.reshape(-1)
    gf = g.reshape(-1)
    idx = np.arange(flat.size)
    if points is not None and points < flat.size:
        idx = np.random.default_rng(seed).choice(flat.size, points, replace=False)
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


def assert_close(a, b, rtol=1e-6, atol=1e-7, what=""):
    a = np.asarray(a, F64)
    b = np.asarray(b, F64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = np.abs(a - b)
    tol = atol + rtol * np.abs(b)
    assert np.all(err <= tol), f"{what}: max err {err.max()} (at {np.unravel_index(err.argmax(), err.shape)})"


def assert_grad(analytic, numeric, rtol, atol, what=""):
    """analytic against a (possibly partial: NaN = not computed) finite-difference grad."""
    analytic = np.asarray(analytic, F64)
    assert analytic.shape == numeric.shape, (what, analytic.shape, numeric.shape)
    assert np.all(np.isfinite(analytic)), what
    done = ~np.isnan(numeric)
    assert done.any()
    assert_close(analytic[done], numeric[done], rtol, atol, what)


def check_module_grads(module, x, rng, rtol=1e-5, atol=1e-7):
    """backward(g) of sum(module(x) * g) against finite differences, for the input and
    every parameter; also checks that parameter grads accumulate."""
    x = x.astype(F64)
    out = module(x)
    out0 = out[0] if isinstance(out, tuple) else out
    g = rng.standard_normal(out0.shape)

    def loss():
        o = module(x)
        o = o[0] if isinstance(o, tuple) else o
        return float((o * g).sum())

    module.zero_grad()
    module(x)
    gi = module.backward(g)
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}
    assert_grad(gi, numgrad(loss, x, points=48), rtol, atol, "grad input")
    for name, p in module.named_parameters():
        assert_grad(analytic[name], numgrad(loss, p.data, points=48), rtol, atol, f"grad {name}")
    # a second backward adds to the same grads
    module(x)
    module.backward(g)
    for name, p in module.named_parameters():
        assert_close(p.grad, 2 * analytic[name], 1e-12, 1e-12, f"accumulated {name}")
    return gi


# ------------------------------------------------------------------ construction and init


def test_conv_init_and_shapes():
    nn.manual_seed(0)
    c = nn.Conv2d(6, 4, (3, 5), groups=2)
    assert c.weight.shape == (4, 3, 3, 5) and c.bias.shape == (4,)
    assert c.weight.dtype == np.float32
    bound = 1 / math.sqrt(3 * 3 * 5)
    assert np.abs(c.weight.data).max() <= bound and np.abs(c.bias.data).max() <= bound
    assert np.abs(c.weight.data).max() > 0.8 * bound  # uniform over the whole range
    c1 = nn.Conv1d(2, 3, 4, bias=False, dtype=np.float64)
    assert c1.weight.shape == (3, 2, 4) and c1.bias is None and c1.weight.dtype == F64
    assert [n for n, _ in c1.named_parameters()] == ["weight"]
    lin = nn.Linear(20, 7)
    assert lin.weight.shape == (7, 20) and np.abs(lin.weight.data).max() <= 1 / math.sqrt(20)
    bn = nn.BatchNorm2d(5)
    assert np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1)


def test_seeding_is_reproducible():
    nn.manual_seed(7)
    a = nn.Conv2d(3, 4, 3).weight.data.copy()
    nn.manual_seed(7)
    b = nn.Conv2d(3, 4, 3).weight.data.copy()
    c = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(7)).weight.data
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_constructor_errors():
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 0)
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, padding="causal")
    with pytest.raises(ValueError):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(TypeError):
        nn.Linear(3, 4, dtype=np.int32)
    with pytest.raises(ValueError):
        nn.BatchNorm2d(3, eps=float("nan"))


def test_train_eval_recursive_and_zero_grad(rng):
    m = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Dropout()), nn.BatchNorm1d(4))
    assert all(x.training for x in m.modules())
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    x = rng.standard_normal((5, 3)).astype(np.float32)
    m(x)
    m.backward(np.ones((5, 4), np.float32))
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    assert [n for n, _ in m.named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]


# ------------------------------------------------------------------ per-module gradients


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), padding="same", dilation=2),
    dict(kernel_size=3, padding=((1, 0), (0, 2)), groups=2, bias=False),
])
def test_conv2d_grad(kw, rng):
    m = nn.Conv2d(4, 6, dtype=F64, rng=rng, **kw)
    check_module_grads(m, rng.standard_normal((2, 4, 6, 7)), rng)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=2, dilation=4, padding="causal"),
    dict(kernel_size=3, stride=2, groups=3, padding="same"),
])
def test_conv1d_grad(kw, rng):
    m = nn.Conv1d(3, 6, dtype=F64, rng=rng, **kw)
    check_module_grads(m, rng.standard_normal((2, 3, 11)), rng)


def test_conv1d_causal_is_causal(rng):
    m = nn.Conv1d(1, 2, 2, dilation=4, padding="causal", dtype=F64, rng=rng)
    x = rng.standard_normal((1, 1, 20))
    y = m(x)
    assert y.shape == (1, 2, 20)
    x2 = x.copy()
    x2[..., 12:] += 1.0  # a change at t >= 12 cannot reach outputs before t = 12
    assert np.array_equal(m(x2)[..., :12], y[..., :12])


@pytest.mark.parametrize("cls,shape,kw", [
    (nn.MaxPool2d, (2, 3, 6, 6), dict(kernel_size=2)),
    (nn.MaxPool2d, (2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    (nn.MaxPool2d, (1, 2, 7, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),
    (nn.MaxPool1d, (2, 3, 9), dict(kernel_size=3, stride=2, dilation=2)),
])
def test_maxpool_grad(cls, shape, kw, rng):
    check_module_grads(cls(**kw), rng.standard_normal(shape), rng)


def test_maxpool_return_indices_and_unpool_chain(rng):
    x = rng.standard_normal((2, 3, 6, 8))
    pool = nn.MaxPool2d(2, return_indices=True)
    out, idx = pool(x)
    assert out.shape == (2, 3, 3, 4) and idx.dtype == np.int64
    # the pooled values are the input values at the indices
    assert np.array_equal(np.take_along_axis(x.reshape(2, 3, -1), idx.reshape(2, 3, -1), -1).reshape(out.shape), out)
    unpool = nn.MaxUnpool2d(2)
    u = unpool(out, idx)
    assert u.shape == x.shape
    assert np.array_equal(u[u != 0], x[u != 0]) and np.count_nonzero(u) == out.size
    # pool(return_indices) -> unpool chains in a Sequential, and so do their backwards
    seq = nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2))
    check_module_grads(seq, x, rng)
    check_module_grads(nn.Sequential(nn.MaxPool1d(3, return_indices=True), nn.MaxUnpool1d(3)),
                       rng.standard_normal((2, 2, 9)), rng)


def test_maxunpool_backward_is_gather(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    out, idx = nn.MaxPool2d(2, return_indices=True)(x)
    unpool = nn.MaxUnpool2d(2)
    unpool(out, idx)
    g = rng.standard_normal(x.shape)
    gi = unpool.backward(g)
    assert gi.shape == out.shape
    # <unpool(v), g> == <v, unpool_backward(g)> for any v
    v = rng.standard_normal(out.shape)
    assert np.isclose((unpool(v, idx) * g).sum(), (v * gi).sum(), rtol=1e-12)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (3, 4, 3, 5)), (nn.BatchNorm1d, (6, 4)),
                                       (nn.BatchNorm1d, (3, 4, 5))])
def test_batchnorm_grad_train_and_eval(cls, shape, rng):
    m = cls(4, dtype=F64)
    m.weight.data[...] = rng.uniform(0.5, 1.5, 4)
    m.bias.data[...] = rng.standard_normal(4)
    m.running_mean[...] = rng.standard_normal(4)
    m.running_var[...] = rng.uniform(0.5, 2.0, 4)
    x = rng.standard_normal(shape) * 2 + 1
    check_module_grads(m, x, rng, rtol=1e-5, atol=1e-6)  # training: batch statistics
    m.eval()
    check_module_grads(m, x, rng, rtol=1e-5, atol=1e-6)  # eval: running statistics


def test_batchnorm_running_stats_and_modes(rng):
    m = nn.BatchNorm2d(3, momentum=0.25, dtype=F64)
    x = rng.standard_normal((4, 3, 5, 5)) * 3 + 2
    y = m(x)
    mean = x.mean(axis=(0, 2, 3))
    var_b = x.var(axis=(0, 2, 3))
    var_u = x.var(axis=(0, 2, 3), ddof=1)
    assert_close(y, (x - mean[:, None, None]) / np.sqrt(var_b[:, None, None] + 1e-5), 1e-10, 1e-10)
    assert_close(m.running_mean, 0.25 * mean, 1e-12, 1e-12)
    assert_close(m.running_var, 0.75 + 0.25 * var_u, 1e-12, 1e-12)
    assert int(m.num_batches_tracked) == 1
    m.eval()
    ye = m(x)
    assert_close(ye, (x - m.running_mean[:, None, None]) / np.sqrt(m.running_var[:, None, None] + 1e-5), 1e-10, 1e-10)
    # momentum=None: cumulative average over the batches seen
    c = nn.BatchNorm1d(2, momentum=None, dtype=F64)
    xs = [rng.standard_normal((8, 2)) for _ in range(3)]
    for xi in xs:
        c(xi)
    assert_close(c.running_mean, np.mean([xi.mean(0) for xi in xs], axis=0), 1e-12, 1e-12)
    # no running stats: batch statistics in eval too, nothing tracked
    n = nn.BatchNorm2d(3, affine=False, track_running_stats=False, dtype=F64)
    n.eval()
    assert n.running_mean is None and list(n.parameters()) == []
    assert_close(n(x), y, 1e-10, 1e-10)
    assert "running_mean" not in n.state_dict()
    with pytest.raises(ValueError):
        m(x[:, :, 0, 0])
    with pytest.raises(ValueError):
        nn.BatchNorm1d(3)(rng.standard_normal((2, 4)))


def test_linear_relu_flatten_grads(rng):
    check_module_grads(nn.Linear(5, 3, dtype=F64, rng=rng), rng.standard_normal((4, 5)), rng)
    check_module_grads(nn.Linear(5, 3, bias=False, dtype=F64, rng=rng), rng.standard_normal((2, 3, 5)), rng)
    check_module_grads(nn.ReLU(), rng.standard_normal((3, 4, 5)), rng)
    f = nn.Flatten()
    x = rng.standard_normal((2, 3, 4, 5))
    assert f(x).shape == (2, 60)
    check_module_grads(f, x, rng)
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert nn.Flatten(2)(x).shape == (2, 3, 20)
    with pytest.raises(ValueError):
        nn.Linear(4, 2, dtype=F64)(x)


def test_linear_matches_numpy(rng):
    lin = nn.Linear(37, 19, rng=rng)
    x = rng.standard_normal((13, 37)).astype(np.float32)
    y = lin(x)
    assert y.dtype == np.float32 and y.shape == (13, 19)
    ref = x.astype(F64) @ lin.weight.data.T.astype(F64) + lin.bias.data
    assert_close(y, ref, 1e-5, 1e-5)


def test_dropout(rng):
    d = nn.Dropout(0.25, rng=np.random.default_rng(3))
    x = rng.standard_normal((200, 50)) + 5.0
    y = d(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    assert_close(y[kept], x[kept] / 0.75, 1e-12, 0)
    g = rng.standard_normal(x.shape)
    assert_close(d.backward(g), np.where(kept, g / 0.75, 0), 1e-12, 0)
    d.eval()
    assert d(x) is x and d.backward(g) is g
    d1 = nn.Dropout(1.0)
    assert np.all(d1(x) == 0)


# ------------------------------------------------------------------ loss, whole network


def test_cross_entropy(rng):
    crit = nn.CrossEntropyLoss()
    logits = rng.standard_normal((6, 4)) * 3
    t = rng.integers(0, 4, 6)
    loss = crit(logits, t)
    assert isinstance(loss, float)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert math.isclose(loss, -np.log(p[np.arange(6), t]).mean(), rel_tol=1e-12)
    g = crit.backward()
    num = numgrad(lambda: crit(logits, t), logits)
    assert_close(g, num, 1e-6, 1e-8)
    # stable for huge logits
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    assert math.isfinite(crit(big, np.array([1, 0])))
    assert crit.backward().dtype == np.float32
    with pytest.raises(IndexError):
        crit(logits, np.full(6, 4))
    with pytest.raises(TypeError):
        crit(logits, t.astype(F64))


def small_net(dtype=F64, rng=None):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=rng),
        nn.BatchNorm2d(3, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4, dtype=dtype, rng=rng),
    )


def test_whole_network_gradient(rng):
    net = small_net(rng=rng)
    crit = nn.CrossEntropyLoss()
    x = rng.standard_normal((3, 2, 6, 6))
    t = np.array([0, 3, 1])

    def loss():
        return crit(net(x), t)

    net.zero_grad()
    loss()
    gx = net.backward(crit.backward())
    assert_grad(gx, numgrad(loss, x, points=60), 1e-5, 1e-8, "grad x")
    for name, p in net.named_parameters():
        assert_grad(p.grad, numgrad(loss, p.data, points=40), 1e-5, 1e-8, name)
    # skipping the input gradient still fills the parameter grads
    net.zero_grad()
    loss()
    assert net.backward(crit.backward(), need_input_grad=False) is None
    assert all(p.grad is not None for p in net.parameters())


def test_state_dict_roundtrip(tmp_path, rng):
    a = small_net(np.float32, rng=np.random.default_rng(1))
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    a(x)  # moves the running statistics
    a.eval()
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "5.weight", "5.bias"]
    np.savez(tmp_path / "w.npz", **sd)
    b = small_net(np.float32, rng=np.random.default_rng(2)).eval()
    assert not np.array_equal(b(x), a(x))
    with np.load(tmp_path / "w.npz") as z:
        missing, unexpected = b.load_state_dict(z)
    assert missing == [] and unexpected == []
    assert np.array_equal(b(x), a(x))
    assert int(b[1].num_batches_tracked) == 1
    # state_dict returns copies; strict loading rejects unknown keys and wrong shapes
    sd["0.weight"][...] = 0
    assert not np.all(a[0].weight.data == 0)
    with pytest.raises(KeyError):
        b.load_state_dict({**sd, "9.weight": np.zeros(1)})
    bad = dict(sd)
    bad["0.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError):
        b.load_state_dict(bad)
    # num_batches_tracked is optional
    del sd["1.num_batches_tracked"]
    b.load_state_dict(sd)


# ------------------------------------------------------------------ optimisers


def test_sgd_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    p.grad = np.array([0.5, 0.25])
    opt.step()
    d1 = np.array([0.5, 0.25]) + 0.01 * np.array([1.0, -2.0])
    assert_close(p.data, np.array([1.0, -2.0]) - 0.1 * d1, 1e-15, 1e-15)
    before = p.data.copy()
    opt.step()
    d2 = np.array([0.5, 0.25]) + 0.01 * before
    assert_close(p.data, before - 0.1 * (0.9 * d1 + d2), 1e-15, 1e-15)
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no grad: skipped
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-1)


def test_adam_first_step_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0, 3.0]))
    opt = optim.Adam([p], lr=0.01)
    p.grad = np.array([0.3, -0.2, 0.0])
    opt.step()
    # after one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps)
    assert_close(p.data, np.array([1.0 - 0.01 * 0.3 / (0.3 + 1e-8), -2.0 + 0.01 * 0.2 / (0.2 + 1e-8), 3.0]),
                 1e-12, 1e-15)


@pytest.mark.parametrize("which", ["sgd", "sgd_momentum", "adam", "adam_wd"])
def test_optimisers_match_torch(which, rng):
    torch = pytest.importorskip("torch")
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    p = nn.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.tensor(w0))
    if which == "sgd":
        ours, theirs = optim.SGD([p], lr=0.1), torch.optim.SGD([tp], lr=0.1)
    elif which == "sgd_momentum":
        ours = optim.SGD([p], lr=0.05, momentum=0.9, weight_decay=1e-2)
        theirs = torch.optim.SGD([tp], lr=0.05, momentum=0.9, weight_decay=1e-2)
    elif which == "adam":
        ours, theirs = optim.Adam([p], lr=0.01), torch.optim.Adam([tp], lr=0.01)
    else:
        ours = optim.Adam([p], lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
        theirs = torch.optim.Adam([tp], lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for g in grads:
        p.grad = g.copy()
        tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    assert_close(p.data, tp.detach().numpy(), 1e-12, 1e-14)


# ------------------------------------------------------------------ summary


def test_summary_hand_computed(capsys):
    rows = pyconv.summary(nn.Conv2d(10, 5, 3), (1, 10, 32, 32))
    assert rows[0]["params"] == 5 * (3 * 3 * 10 + 1) == 455
    assert rows[0]["output_shape"] == (1, 5, 30, 30)
    assert rows[0]["macs"] == 5 * 30 * 30 * 10 * 9
    assert rows[0]["receptive_field"] == (3, 3) and rows[0]["jump"] == (1, 1)
    text = capsys.readouterr().out
    assert "Conv2d" in text and "455" in text and "Total params: 455" in text

    C = 8
    one = nn.Sequential(nn.Conv2d(C, C, 7, bias=False))
    three = nn.Sequential(*[nn.Conv2d(C, C, 3, bias=False) for _ in range(3)])
    r1 = pyconv.summary(one, (2, C, 20, 20), print_fn=None)
    r3 = pyconv.summary(three, (2, C, 20, 20), print_fn=None)
    assert sum(r["params"] for r in r1) == 49 * C * C
    assert sum(r["params"] for r in r3) == 27 * C * C
    assert r1[-1]["receptive_field"] == r3[-1]["receptive_field"] == (7, 7)
    assert [r["receptive_field"] for r in r3] == [(3, 3), (5, 5), (7, 7)]
    assert r1[-1]["output_shape"] == r3[-1]["output_shape"] == (2, C, 14, 14)

    causal = nn.Sequential(*[nn.Conv1d(4, 4, 2, dilation=d, padding="causal") for d in (1, 2, 4, 8)])
    rc = pyconv.summary(causal, (1, 4, 100), print_fn=None)
    assert [r["receptive_field"] for r in rc] == [(2,), (4,), (8,), (16,)]
    assert all(r["output_shape"] == (1, 4, 100) for r in rc) and rc[-1]["jump"] == (1,)


def test_summary_strides_pools_and_keys():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3),   # r 7, j 2
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),      # r 7 + 2*2 = 11, j 4
        nn.Conv2d(8, 8, 3, padding=1, dilation=1),  # r 11 + 2*4 = 19
        nn.Conv2d(8, 4, 3, padding=2, dilation=2),  # r 19 + 4*4 = 35
        nn.Flatten(), nn.Linear(4 * 56 * 56, 10),
    )
    rows = pyconv.summary(net, (2, 3, 224, 224), print_fn=None)
    assert all(set(r) >= {"name", "output_shape", "params", "macs", "receptive_field", "jump"} for r in rows)
    assert [r["name"] for r in rows] == [str(i) for i in range(8)]
    assert rows[0]["output_shape"] == (2, 8, 112, 112)
    assert rows[3]["output_shape"] == (2, 8, 56, 56)
    assert [r["receptive_field"] for r in rows[:6]] == [(7, 7)] * 3 + [(11, 11), (19, 19), (35, 35)]
    assert [r["jump"] for r in rows[:6]] == [(2, 2)] * 3 + [(4, 4)] * 3
    assert rows[1]["params"] == 16 and rows[7]["params"] == 4 * 56 * 56 * 10 + 10
    assert rows[7]["macs"] == 2 * 4 * 56 * 56 * 10
    assert rows[6]["output_shape"] == (2, 4 * 56 * 56) and rows[6]["receptive_field"] == ()
    with pytest.raises(ValueError):
        pyconv.summary(net, (2, 4, 224, 224), print_fn=None)  # wrong channel count
    with pytest.raises(ValueError):
        pyconv.summary(nn.Conv2d(3, 3, 5), (1, 3, 4, 4), print_fn=None)  # kernel larger than input


# ------------------------------------------------------------------ against torch


def test_layer_by_layer_against_torch(rng):
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    ours = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 3 * 3, 5, rng=rng),
    )
    theirs = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), tnn.BatchNorm2d(8), tnn.ReLU(),
        tnn.Flatten(), tnn.Dropout(0.5), tnn.Linear(8 * 3 * 3, 5),
    ).double()
    ours[1].weight.data[...] = rng.uniform(0.5, 1.5, 8)
    ours[5].bias.data[...] = rng.standard_normal(8)
    theirs.load_state_dict({k: torch.tensor(v.astype(F64) if v.dtype.kind == "f" else v)
                            for k, v in ours.state_dict().items()})
    ours[8].p = 0.0  # dropout off in both (torch in eval for it), everything else in train mode
    theirs[8].eval()
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    tx = torch.tensor(x.astype(F64), requires_grad=True)
    acts = []
    h = tx
    for layer in theirs:
        h = layer(h)
        h.retain_grad()
        acts.append(h)
    t = np.array([0, 4, 2, 1])
    crit = nn.CrossEntropyLoss()
    y = x
    for i, layer in enumerate(ours):
        y = layer(y)
        assert_close(y, acts[i].detach().numpy(), 1e-4, 1e-4, f"forward layer {i}")
    loss = crit(y, t)
    tloss = torch.nn.functional.cross_entropy(acts[-1], torch.tensor(t))
    tloss.backward()
    assert math.isclose(loss, tloss.item(), rel_tol=1e-5)
    g = crit.backward()
    for i in range(len(ours) - 1, -1, -1):
        g = ours[i].backward(g)
        ref = (acts[i - 1].grad if i > 0 else tx.grad).numpy()
        assert_close(g, ref, 1e-3, 1e-5, f"grad into layer {i}")
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), 1e-3, 1e-5, f"grad {name}")
    for k, v in theirs.state_dict().items():
        if "running" in k:
            assert_close(ours.state_dict()[k], v.numpy(), 1e-5, 1e-6, k)


# ------------------------------------------------------------------ examples


def _example(name):
    """Load examples/<name>.py by path (the examples are scripts, not a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} not present")
    spec = importlib.util.spec_from_file_location(f"pyconv_example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    """The example runs are hundreds of tiny kernel calls; on a loaded 2-core machine the
    OpenMP fork/join of each call dominates, so they run single-threaded to stay fast
    (every kernel's threaded path is tested in its own file)."""
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(1)
    yield
    pyconv.set_num_threads(before)


def test_digits_example_short_run(tmp_path, one_thread):
    pytest.importorskip("sklearn")
    train = _example("train_digits").train

    res = train(epochs=3, seed=0, out=str(tmp_path / "digits.npz"), verbose=False)
    assert res["test_accuracy"] >= 0.9, res
    with np.load(tmp_path / "digits.npz") as z:
        assert "0.weight" in z.files


def test_causal_forecast_example_short_run(one_thread):
    run = _example("causal_forecast").run

    res = run(steps=150, seed=0, verbose=False)
    assert res["receptive_field"] == 16
    assert res["model_rmse"] < res["naive_rmse"], res


# ------------------------------------------------------------------ summary vs running the model

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.booleans()),
                min_size=1, max_size=4))
def test_summary_matches_forward_and_gradient_support(layers):
    """Output shapes from summary equal the shapes of a real forward pass, and the
    receptive field equals the span of input positions whose gradient reaches output 0
    (all-ones weights, no padding, increasing input)."""
    mods = []
    for k, s, d, pool in layers:
        if pool:
            mods.append(nn.MaxPool1d(k, stride=s, dilation=d))
        else:
            c = nn.Conv1d(1, 1, k, stride=s, dilation=d, bias=False, dtype=F64)
            c.weight.data[...] = 1.0
            mods.append(c)
    net = nn.Sequential(*mods)
    rows = pyconv.summary(net, (1, 1, 400), print_fn=None)
    x = np.linspace(1.0, 2.0, 400)[None, None]  # increasing: pool windows have no ties
    y = net(x)
    assert y.shape == rows[-1]["output_shape"]
    g = np.zeros_like(y)
    g[..., 0] = 1.0
    gx = net.backward(g)[0, 0]
    support = np.flatnonzero(gx)
    rf = rows[-1]["receptive_field"][0]
    # every layer's output increases along L, so each max-pool passes the gradient to the
    # last element of its window: the rightmost element reached is the field's last one
    assert support[-1] + 1 == rf
    if all(not p for *_, p in layers):
        assert support[0] == 0  # and without pools the whole field is reached


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)])
def test_optimiser_flat_path_equals_per_parameter_path(make, rng):
    shapes = [(4, 3, 3, 3), (4,), (10, 7), (10,)]
    data = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    pa = [nn.Parameter(d.copy()) for d in data]
    pb = [nn.Parameter(d.copy()) for d in data]
    oa, ob = make(pa), make(pb)
    ob._one_dtype = False  # forces one update per parameter
    for step, gs in enumerate(grads):
        for p, q, g in zip(pa, pb, gs):
            p.grad, q.grad = g.copy(), g.copy()
        if step == 2:  # a step where one parameter has no gradient: both take the per-parameter path
            pa[1].grad = pb[1].grad = None
        oa.step()
        ob.step()
        for p, q in zip(pa, pb):
            assert np.array_equal(p.data, q.data)
    assert not np.array_equal(pa[0].data, data[0])


# ------------------------------------------------------------------ layer fast paths
# Once a configuration has passed the functional layer's checks, Conv2d, MaxPool2d and
# BatchNorm call the kernels directly. These tests pin that the direct calls give the
# functional API's results bit for bit, follow changes of shape, dtype and settings, and
# still raise the functional layer's errors.


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_layer_fast_paths_equal_functional_calls(dt, rng):
    conv = nn.Conv2d(3, 5, 3, stride=(1, 2), padding=((1, 0), (2, 1)), dtype=dt, rng=rng)
    pool = nn.MaxPool2d(2, stride=1, padding=1)
    bn = nn.BatchNorm2d(5, dtype=dt)
    for n, h, w in ((2, 7, 9), (2, 7, 9), (3, 6, 5), (2, 7, 9)):  # repeats, a new shape, back again
        x = rng.standard_normal((n, 3, h, w)).astype(dt)
        y = conv(x)
        assert np.array_equal(y, pyconv.conv2d(x, conv.weight.data, conv.bias.data, (1, 2), ((1, 0), (2, 1))))
        rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
        z = bn(y)
        ref = pyconv.batch_norm(y, rm0, rv0, bn.weight.data, bn.bias.data, training=True)
        assert np.array_equal(z, ref)
        assert np.array_equal(bn.running_mean, rm0) and np.array_equal(bn.running_var, rv0)
        p, idx = pool(z), pool._indices
        pr, ir = pyconv.max_pool2d(z, 2, 1, 1, return_indices=True)
        assert np.array_equal(p, pr) and np.array_equal(idx, ir)

        gp = rng.standard_normal(p.shape).astype(dt)
        gz = pool.backward(gp)
        assert np.array_equal(gz, pyconv.max_pool2d_backward(gp, ir, z.shape))
        conv.zero_grad()
        bn.zero_grad()
        gy = bn.backward(gz)
        gy_ref, gw_ref, gb_ref = pyconv.batch_norm_backward(gz, y, bn.weight.data, training=True)
        # the layer reuses the forward's batch statistics; float32 gives the same bits
        # as recomputing them, float64 can differ in the last place
        tol = dict(rtol=0, atol=0) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gy, gy_ref, **tol)
        np.testing.assert_allclose(bn.weight.grad, gw_ref, **tol)
        np.testing.assert_allclose(bn.bias.grad, gb_ref, **tol)
        gx = conv.backward(gy)
        gx_ref, gw, gb = pyconv.conv2d_backward(gy, x, conv.weight.data, (1, 2), ((1, 0), (2, 1)))
        assert np.array_equal(gx, gx_ref) and np.array_equal(conv.weight.grad, gw)
        assert np.array_equal(conv.bias.grad, gb)


def test_layer_fast_paths_follow_setting_changes_and_keep_errors(rng):
    conv = nn.Conv2d(2, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    conv(x)
    conv(x)
    conv.stride = (2, 2)  # a changed setting takes effect at once
    assert conv(x).shape == (2, 4, 3, 3)
    assert np.array_equal(conv(x), pyconv.conv2d(x, conv.weight.data, conv.bias.data, 2, 1))
    with pytest.raises(TypeError, match="share one dtype"):
        conv(x.astype(np.float64))
    with pytest.raises(ValueError, match="weight.shape\\[1\\]"):
        conv(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    conv(x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        conv.backward(np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(TypeError, match="share one dtype"):
        conv.backward(np.zeros((2, 4, 3, 3), np.float64))

    pool = nn.MaxPool2d(2)
    pool(x)
    pool(x)
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        pool(x.astype(np.int32))
    pool.kernel_size = (3, 3)
    assert np.array_equal(pool(x), pyconv.max_pool2d(x, 3, 2))
    with pytest.raises(TypeError, match="grad_output"):
        pool.backward(np.zeros((2, 2, 2, 2), np.int64))

    bn = nn.BatchNorm2d(2)
    bn(x)
    with pytest.raises(TypeError, match="share one dtype"):
        bn(x.astype(np.float64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x[:1, :, :1, :1])
    bn(x)
    with pytest.raises(ValueError, match="grad_output shape"):
        bn.backward(np.zeros((2, 2, 6, 5), np.float32))
    bn.eps = 0.5  # statistics saved under another eps are not reused
    g = rng.standard_normal(x.shape).astype(np.float32)
    bn.zero_grad()
    got = bn.backward(g)
    assert np.array_equal(got, pyconv.batch_norm_backward(g, x, bn.weight.data, eps=0.5)[0])


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_relu_matches_numpy_maximum_bitwise(dt, rng):
    special = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-40, 2.5, -2.5], dt)
    x = np.concatenate([special, rng.standard_normal(1000).astype(dt)]).reshape(2, -1, 5)
    relu = nn.ReLU()
    ibits = np.int32 if dt == np.float32 else np.int64
    for arr in (x, x[:, ::-1], np.asfortranarray(x)):  # contiguous (fast path) and other layouts
        y = relu(arr)
        assert np.array_equal(y.view(ibits), np.maximum(arr, dt(0)).view(ibits))
        g = rng.standard_normal(arr.shape).astype(dt)
        assert np.array_equal(relu.backward(g), g * (np.maximum(arr, dt(0)) > 0))
    big = rng.standard_normal((3, 4000)).astype(dt)  # larger than any earlier input
    assert np.array_equal(relu(big), np.maximum(big, dt(0)))


def test_fresh_gradients_are_owned_and_accumulate(rng):
    lin = nn.Linear(4, 3, rng=rng)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    lin(x)
    lin.backward(g)
    first = lin.weight.grad.copy()
    assert lin.weight.grad.flags.writeable and lin.weight.grad.flags.owndata
    lin(x)
    lin.backward(g)
    assert np.array_equal(lin.weight.grad, first + first)  # the second pass adds
    np.testing.assert_allclose(first, g.T.astype(F64) @ x, rtol=1e-5, atol=1e-6)
    conv = nn.Conv2d(1, 2, 3, rng=rng)
    conv.weight.requires_grad = False
    conv(rng.standard_normal((1, 1, 5, 5)).astype(np.float32))
    conv.backward(np.ones((1, 2, 3, 3), np.float32))
    assert conv.weight.grad is None and conv.bias.grad is not None
