"""pyconv.torch: pyconv-backed torch layers against torch's own (skipped without torch)."""
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import pyconv.torch as pt  # noqa: E402


def test_import_pyconv_does_not_import_torch():
    import subprocess

    code = "import sys, pyconv, pyconv.nn, pyconv.optim; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _pair(ours_cls, theirs_cls, *args, **kw):
    torch.manual_seed(0)
    theirs = theirs_cls(*args, **kw).double()
    ours = ours_cls(*args, **kw).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _compare(ours, theirs, x, rtol=1e-10, atol=1e-12):
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    if isinstance(ya, tuple):
        assert torch.equal(ya[1], yb[1])
        ya, yb = ya[0], yb[0]
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol, atol=atol)
    pa = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        torch.testing.assert_close(pa[name].grad, p.grad, rtol=rtol, atol=atol)
    for (na, ba), (nb, bb) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding="valid", dilation=2, groups=2, bias=False),
                                dict(padding="same")])
def test_conv2d(kw):
    ours, theirs = _pair(pt.Conv2d, torch.nn.Conv2d, 4, 6, 3, **kw)
    _compare(ours, theirs, torch.randn(2, 4, 9, 8, dtype=torch.float64))


def test_conv1d():
    ours, theirs = _pair(pt.Conv1d, torch.nn.Conv1d, 3, 4, 2, dilation=4, padding=2)
    _compare(ours, theirs, torch.randn(2, 3, 17, dtype=torch.float64))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=2, return_indices=True)])
def test_maxpool2d(kw):
    ours, theirs = _pair(pt.MaxPool2d, torch.nn.MaxPool2d, **kw)
    _compare(ours, theirs, torch.randn(2, 3, 9, 8, dtype=torch.float64))


@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False)])
def test_batchnorm2d_train_and_eval(kw):
    ours, theirs = _pair(pt.BatchNorm2d, torch.nn.BatchNorm2d, 5, **kw)
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64) * 2 + 1
    _compare(ours, theirs, x, rtol=1e-9, atol=1e-10)
    _compare(ours, theirs, x * 0.5, rtol=1e-9, atol=1e-10)
    ours.eval()
    theirs.eval()
    _compare(ours, theirs, x, rtol=1e-9, atol=1e-10)


def test_convert_whole_model_float32():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    ref = torch.nn.Sequential(*[m for m in net])  # same parameter objects
    import copy
    ref = copy.deepcopy(net)
    pt.convert(net)
    assert type(net[0]) is pt.Conv2d and type(net[1]) is pt.BatchNorm2d and type(net[3]) is pt.MaxPool2d
    x = torch.randn(6, 1, 8, 8)
    t = torch.randint(0, 10, (6,))
    for m in (net, ref):
        torch.nn.functional.cross_entropy(m(x), t).backward()
    for (n, a), (_, b) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
