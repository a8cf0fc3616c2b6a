"""One-step-ahead forecasting with a stack of causal dilated 1D convolutions.

    python examples/causal_forecast.py [--steps 400] [--seed 0] [--threads N]

A synthetic series (a sum of sines plus Gaussian noise) is generated; a WaveNet-style
stack of kernel-2 convolutions with dilations 1, 2, 4, 8 and padding='causal' learns to
predict x[t+1] from x[t-15 .. t], trained with Adam on random windows. Its error on a
held-out stretch is compared with the naive last-value forecast x[t+1] = x[t]. The last
line gives the stack's receptive field, read from pyconv.summary.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import pyconv
from pyconv import nn, optim

DILATIONS = (1, 2, 4, 8)


def make_series(n: int, seed: int, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    x = (np.sin(2 * np.pi * t / 23.0) + 0.6 * np.sin(2 * np.pi * t / 41.0 + 1.0)
         + 0.4 * np.sin(2 * np.pi * t / 11.0 + 2.0))
    return (x + noise * rng.standard_normal(n)).astype(np.float32)


def build_model(channels: int = 16, dtype=np.float32) -> nn.Sequential:
    layers = []
    c_in = 1
    for d in DILATIONS:
        layers += [nn.Conv1d(c_in, channels, 2, dilation=d, padding="causal", dtype=dtype), nn.ReLU()]
        c_in = channels
    layers.append(nn.Conv1d(channels, 1, 1, dtype=dtype))  # 1x1 read-out
    return nn.Sequential(*layers)


def run(steps: int = 400, seed: int = 0, window: int = 96, batch: int = 16, lr: float = 3e-3,
        verbose: bool = True) -> dict:
    nn.manual_seed(seed)
    series = make_series(6000, seed)
    train, test = series[:4500], series[4500:]
    model = build_model()
    rows = pyconv.summary(model, (batch, 1, window), print_fn=print if verbose else None)
    rf = int(rows[-1]["receptive_field"][0])
    warm = rf - 1  # positions before this see implicit zero padding, so they are not scored
    crit = nn.MSELoss()
    opt = optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(train) - window - 1, batch)
        xb = np.stack([train[s:s + window] for s in starts])[:, None, :]
        yb = np.stack([train[s + 1:s + window + 1] for s in starts])[:, None, :]
        opt.zero_grad()
        pred = model(xb)
        loss = crit(pred[..., warm:], yb[..., warm:])
        g = np.zeros_like(pred)
        g[..., warm:] = crit.backward()
        model.backward(g, need_input_grad=False)
        opt.step()
        if verbose and (step % max(steps // 10, 1) == 0 or step == 1):
            print(f"step {step:5d}/{steps}  train mse {loss:.5f}", flush=True)
    model.eval()
    pred = model(test[None, None, :-1])[0, 0]
    target = test[1:]
    model_rmse = float(np.sqrt(np.mean((pred[warm:] - target[warm:]) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((test[:-1][warm:] - target[warm:]) ** 2)))
    return {"receptive_field": rf, "model_rmse": model_rmse, "naive_rmse": naive_rmse}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="kernel threads (0 = pyconv's default)")
    args = ap.parse_args(argv)
    if args.threads:
        pyconv.set_num_threads(args.threads)
    res = run(args.steps, args.seed)
    rf = res["receptive_field"]
    ratio = res["model_rmse"] / res["naive_rmse"]
    print(f"held-out RMSE: model {res['model_rmse']:.4f}  naive last-value {res['naive_rmse']:.4f}  "
          f"(model/naive = {ratio:.3f}, {'beats' if ratio < 1 else 'does NOT beat'} the baseline)")
    print(f"receptive field: {rf} samples ({rf - 1} steps back)")
    return 0 if ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
