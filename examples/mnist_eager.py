"""examples/mnist.py as a plain PyTorch-style loop: one Python iteration per step, values read with .item().

Each iteration traces the step again; reading `loss.item()` (or `zero_grad()` ending the step)
runs it, and the structural compile cache makes every step after the first reuse the first
one's compiled program.

    python examples/mnist_eager.py                 # digits, best device
    python examples/mnist_eager.py --steps 100 --device numpy
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn

from mnist import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="path of a local mnist.npz (default: sklearn digits)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true", help="print the compile cache's counts and ms per step")
    args = parser.parse_args()
    if args.device:
        ad.set_default_device(args.device)

    ad.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data(args.data)
    rng = np.random.default_rng(0)
    batch = min(args.batch, len(x_train))
    model = nn.Sequential(nn.Linear(x_train.shape[1], 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = nn.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    start = time.perf_counter()
    for step in range(args.steps):
        picks = rng.integers(0, len(x_train), batch)
        images = ad.Tensor(x_train[picks], requires_grad=False)
        labels = ad.Tensor(y_train[picks], requires_grad=False)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step + 1:5d}  loss {loss.item():.4f}")
    seconds = time.perf_counter() - start

    predictions = model(ad.Tensor(x_test, requires_grad=False)).argmax(-1).numpy()
    print(f"{args.steps} steps in {seconds:.2f} s; test accuracy {(predictions == y_test).mean():.4f}")
    if args.profile:
        info = ad.compile_cache_info()
        print(f"compile cache: {info.misses} compiles, {info.hits} hits")


if __name__ == "__main__":
    main()
