"""Train a small CNN with BatchNorm on scikit-learn's digits (8x8 images, ships with sklearn).

    python examples/cnn_digits.py                   # best device, 200 steps
    python examples/cnn_digits.py --steps 50 --device numpy

The training loop is one `ir_for`: BatchNorm's running mean and variance are updated on
the device every step, and the test forward, traced after `model.eval()`, normalises with
them, as in PyTorch.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, 1, 8, 8) float images in [0, 1] and int64 labels (as sklearn gives them), split 80/20."""
    from sklearn.datasets import load_digits as sklearn_digits
    digits = sklearn_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),    # 16 x 8 x 8
        nn.MaxPool2d(2),                                                  # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),   # 32 x 4 x 4
        nn.MaxPool2d(2),                                                  # 32 x 2 x 2
        nn.Flatten(), nn.Linear(128, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    args = parser.parse_args()

    ad.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits()
    loader = nn.DataLoader(x_train, y_train, batch_size=args.batch, shuffle=True, seed=0)
    model = make_model()
    opt = nn.Adam(model.parameters(), lr=args.lr)

    def train_step(step: ad.Tensor) -> None:
        images, labels = loader.feeders()
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(lambda i, v: print(f"step {int(i) + 1:5d}  loss {float(v):.4f}"), [step, loss],
                    name="loss", every=min(20, args.steps))

    model.train()
    ad.ir_for(args.steps, train_step)

    model.eval()   # the test forward uses the running statistics
    predictions = model(ad.Tensor(x_test, name="test_images", requires_grad=False)).argmax(-1)
    accuracy: list[float] = []
    ad.Receiver(lambda p: accuracy.append(float((p == y_test).mean())), [predictions], name="accuracy")

    start = time.perf_counter()
    report = ad.execute(device=args.device, profile=args.profile or None)
    print(f"device {report.device}: {args.steps} steps in {time.perf_counter() - start:.2f} s "
          f"(compile {report.compile_seconds:.2f} s)")
    print(f"test accuracy {accuracy[0]:.4f}")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")


if __name__ == "__main__":
    main()
