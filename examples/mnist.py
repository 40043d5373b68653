"""Train an MLP classifier inside one ir_for loop: MNIST from a local file, else sklearn's digits.

    python examples/mnist.py                      # digits (ships with scikit-learn), best device
    python examples/mnist.py --data mnist.npz     # a local MNIST file with x_train/y_train/x_test/y_test
    python examples/mnist.py --steps 50 --show-graph
    mpiexec -n 2 python examples/mnist.py --distributed   # data parallel: the batch split over 2 ranks
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn


def load_data(path: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if path:
        data = np.load(path)
        x_train = data["x_train"].reshape(len(data["x_train"]), -1).astype(np.float32) / 255.0
        x_test = data["x_test"].reshape(len(data["x_test"]), -1).astype(np.float32) / 255.0
        return x_train, data["y_train"].astype(np.int32), x_test, data["y_test"].astype(np.int32)
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="path of a local mnist.npz (default: sklearn digits)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    parser.add_argument("--show-graph", action="store_true", help="print the traced graph")
    parser.add_argument("--log-every", type=int, default=20, help="print the loss every this many steps")
    parser.add_argument("--distributed", action="store_true",
                        help="data parallel over the MPI ranks (launch with mpiexec -n N): each rank trains "
                             "on its slice of every global batch, gradients averaged across ranks")
    args = parser.parse_args()
    if args.distributed:
        ad.distributed.init()

    ad.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data(args.data)
    features = x_train.shape[1]
    rng = np.random.default_rng(0)
    batch = min(args.batch, len(x_train))

    model = nn.Sequential(nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model)   # rank 0's weights; gradients averaged
    opt = nn.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    current: dict[str, np.ndarray] = {}

    def next_images() -> np.ndarray:   # one host call draws the batch; the labels follow it
        picks = rng.integers(0, len(x_train), batch)
        current["labels"] = y_train[picks]
        return x_train[picks]

    def train_step(step: ad.Tensor):
        # every rank draws the same global batch (same seed); shard=True feeds each its slice
        images = ad.Feeder(next_images, (batch, features), name="images", shard=args.distributed)
        labels = ad.Feeder(lambda: current["labels"], (batch,), np.int32, name="labels", shard=args.distributed)
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if args.distributed:   # the mean over the ranks' equal slices: the global batch's loss
            loss = ad.distributed.all_reduce(loss, "mean")
        ad.Receiver(lambda i, v: print(f"step {int(i) + 1:5d}  loss {float(v):.6f}"), [step, loss],
                    name="loss", every=min(args.log_every, args.steps))

    ad.ir_for(args.steps, train_step)

    test_x = ad.Tensor(x_test, name="test_images", requires_grad=False)
    predictions = model(test_x).argmax(-1)
    accuracy: list[float] = []
    ad.Receiver(lambda p: accuracy.append(float((p == y_test).mean())), [predictions], name="accuracy")

    if args.show_graph:
        ad.print_graph()
    start = time.perf_counter()
    report = ad.execute(device=args.device, profile=args.profile or None)
    if ad.distributed.rank() != 0:
        return
    print(f"device {report.device}: {args.steps} steps in {time.perf_counter() - start:.2f} s "
          f"(compile {report.compile_seconds:.2f} s)")
    print(f"test accuracy {accuracy[0]:.4f}")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")


if __name__ == "__main__":
    main()
