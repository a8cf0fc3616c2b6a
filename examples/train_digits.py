"""Train a small conv-BN-ReLU-pool network on scikit-learn's bundled 8x8 digits.

    python examples/train_digits.py [--epochs 8] [--seed 0] [--out digits_weights.npz] [--threads N]

Everything runs on pyconv's kernels (conv, max-pool, batch norm, the GEMM behind
Linear); nothing is downloaded (the digits ship with scikit-learn). Prints a progress
bar, loss and accuracy per epoch, saves the weights with np.savez and ends with the line
`test accuracy: 0.xxxx`.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import pyconv
from pyconv import nn, optim


def build_model(dtype=np.float32) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, dtype=dtype),   # 16 x 8 x 8
        nn.BatchNorm2d(16, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),                               # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1, dtype=dtype),  # 32 x 4 x 4
        nn.BatchNorm2d(32, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),                               # 32 x 2 x 2
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10, dtype=dtype),
    )


def load_data(seed: int, test_fraction: float = 0.25, dtype=np.float32):
    """The 1797 digits as (N, 1, 8, 8) in [0, 1], split by a seeded stratified shuffle."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(dtype)[:, None, :, :]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        test_idx.extend(members[: int(round(len(members) * test_fraction))])
    test = np.zeros(len(y), bool)
    test[np.array(test_idx)] = True
    return x[~test], y[~test], x[test], y[test]


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def evaluate(model, x, y, batch_size=256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        correct += int((logits.argmax(axis=1) == y[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(x), 1)


def train(epochs: int = 8, seed: int = 0, batch_size: int = 32, lr: float = 3e-3, out: str | None = None,
          verbose: bool = True, train_subset: int | None = None) -> dict:
    """Train and return {'test_accuracy', 'train_accuracy', 'losses', 'seconds'}."""
    nn.manual_seed(seed)
    xtr, ytr, xte, yte = load_data(seed)
    if train_subset is not None:
        xtr, ytr = xtr[:train_subset], ytr[:train_subset]
    model = build_model()
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    n = len(xtr)
    steps = (n + batch_size - 1) // batch_size
    tty = verbose and sys.stdout.isatty()
    losses = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        total, correct = 0.0, 0
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            xb, yb = xtr[idx], ytr[idx]
            opt.zero_grad()
            logits = model(xb)
            loss = crit(logits, yb)
            model.backward(crit.backward(), need_input_grad=False)
            opt.step()
            total += loss * len(idx)
            correct += int((logits.argmax(axis=1) == yb).sum())
            if tty:
                print(f"\repoch {epoch:2d}/{epochs} {_bar(s + 1, steps)}", end="", flush=True)
        losses.append(total / n)
        if verbose:
            acc = evaluate(model, xte, yte)
            prefix = "\r" if tty else ""
            print(f"{prefix}epoch {epoch:2d}/{epochs} {_bar(steps, steps)}  loss {total / n:.4f}  "
                  f"train acc {correct / n:.4f}  test acc {acc:.4f}  ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    seconds = time.perf_counter() - t0
    test_acc = evaluate(model, xte, yte)
    if out:
        np.savez(out, **model.state_dict())
        if verbose:
            print(f"weights saved to {out}")
    return {"test_accuracy": test_acc, "train_accuracy": evaluate(model, xtr, ytr),
            "losses": losses, "seconds": seconds, "model": model}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="digits_weights.npz", help="where np.savez writes the weights ('' = don't)")
    ap.add_argument("--threads", type=int, default=0,
                    help="kernel threads (0 = pyconv's default; the kernels here are tiny, so 1 can be faster "
                         "on a busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        pyconv.set_num_threads(args.threads)
    info = pyconv.kernel_info()
    print(f"pyconv {info['version']}  isa={info['isa']}  threads={info['threads']}")
    pyconv.summary(build_model(), (args.batch_size, 1, 8, 8))
    res = train(args.epochs, args.seed, args.batch_size, args.lr, args.out or None, verbose=True)
    print(f"trained in {res['seconds']:.1f} s")
    print(f"test accuracy: {res['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
