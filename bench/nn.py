"""Whole-network benchmark: one training epoch of the digits network.

The network of examples/train_digits.py (conv-BN-ReLU-pool twice, flatten, linear;
cross entropy, Adam) trained for one epoch over the 8x8 digits training split in
mini-batches, in pyconv and in the identical PyTorch CPU network (same weights, same
batches, same thread count). The digits come from scikit-learn when it is installed;
otherwise random images of the same shape are used (the timing does not depend on the
values).

Metric 'flops': 6 * (conv + linear MACs per sample) * samples, i.e. forward 2*MACs and
backward (grad input + grad weight) 4*MACs. Batch norm, ReLU, pooling, the loss and the
optimiser step are not counted, so the % of the FMA peak understates the work done.
"""
from __future__ import annotations

import numpy as np

from common import Workload, try_torch

N_TRAIN = 1347  # 75% of the 1797 digits, as the example's split


def _data(n: int):
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images[:n] / 16.0).astype(np.float32)[:, None]
        y = d.target[:n].astype(np.int64)
    except Exception:
        rng = np.random.default_rng(0)
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        y = rng.integers(0, 10, n)
    return x, y


def _pyconv_model():
    from pyconv import nn

    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10),
    )


def _macs_per_sample() -> int:
    import pyconv

    rows = pyconv.summary(_pyconv_model(), (1, 1, 8, 8), print_fn=None)
    return sum(r["macs"] for r in rows if r["type"] in ("Conv2d", "Linear"))


def _setup(n: int, batch: int):
    def setup():
        from pyconv import nn, optim

        x, y = _data(n)
        order = np.random.default_rng(1).permutation(n)
        batches = [(np.ascontiguousarray(x[order[i:i + batch]]), y[order[i:i + batch]])
                   for i in range(0, n, batch)]
        model = _pyconv_model()
        crit = nn.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), lr=1e-3)

        def pyconv_epoch():
            for xb, yb in batches:
                opt.zero_grad()
                crit(model(xb), yb)
                model.backward(crit.backward(), need_input_grad=False)
                opt.step()

        fns = {"pyconv": pyconv_epoch, "reference": None, "torch": None}
        torch = try_torch()
        if torch is not None:
            tnn = torch.nn
            tmodel = tnn.Sequential(
                tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
                tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
                tnn.Flatten(), tnn.Linear(128, 10),
            )
            tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
            topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
            tcrit = tnn.CrossEntropyLoss()
            tbatches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

            def torch_epoch():
                for xb, yb in tbatches:
                    topt.zero_grad()
                    tcrit(tmodel(xb), yb).backward()
                    topt.step()

            fns["torch"] = torch_epoch
        return fns

    return setup


def workloads(quick: bool) -> list:
    macs = _macs_per_sample()
    out = []
    configs = [(N_TRAIN if not quick else 256, 32)]
    if not quick:
        configs.append((N_TRAIN, 128))
    for n, batch in configs:
        name = "digits epoch" if (n, batch) == (N_TRAIN, 32) else f"digits epoch n{n} b{batch}"
        out.append(Workload(
            family="nn", name=name, direction="train", metric="flops",
            amount=6.0 * macs * n, setup=_setup(n, batch),
            notes=f"{n} samples, batch {batch}, Adam; flops = 6 x conv+linear MACs ({macs}/sample)",
            tags=("nn", "training"),
        ))
    return out
