"""Train a small encoder-decoder Transformer to reverse sequences of varying length.

    python examples/seq2seq.py                   # best device, 300 steps
    python examples/seq2seq.py --steps 40 --device numpy

Sequences are padded to one length; key padding masks keep the padding out of every
attention (encoder, decoder and memory), a causal mask keeps the decoder from looking
ahead, the loss ignores padded targets (`ignore_index`), and the learning rate follows a
linear warmup then a cosine decay, computed on the device: `scheduler.step()` sits in
the `ir_for` body as in a PyTorch loop. Batches come from a Python generator through
`nn.IterableLoader` (int64 arrays, as numpy makes them).
"""
from __future__ import annotations

import argparse
import time
from typing import Iterator

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn
from autodiff.nn.optim import lr_scheduler

PAD, BOS, VOCAB = 0, 1, 12      # tokens 2..11 are the payload
MAX_LEN, MIN_LEN = 8, 3


def batches(batch: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(source, decoder input, target), each (batch, MAX_LEN), padded with PAD: the target is
    the source reversed, the decoder input the target shifted right behind BOS."""
    rng = np.random.default_rng(seed)
    while True:
        lengths = rng.integers(MIN_LEN, MAX_LEN + 1, batch)
        source = np.full((batch, MAX_LEN), PAD)
        target = np.full((batch, MAX_LEN), PAD)
        for row, length in enumerate(lengths):
            tokens = rng.integers(2, VOCAB, length)
            source[row, :length], target[row, :length] = tokens, tokens[::-1]
        decoder_input = np.concatenate([np.full((batch, 1), BOS), target[:, :-1]], axis=1)
        yield source, decoder_input, target


class Reverser(nn.Module):
    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 1, ff: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Embedding(MAX_LEN, d_model)
        self.transformer = nn.Transformer(d_model, heads, layers, layers, ff, dropout=0.0, batch_first=True)
        self.out = nn.Linear(d_model, VOCAB)

    def forward(self, source: ad.Tensor, decoder_input: ad.Tensor) -> ad.Tensor:
        positions = ad.arange(MAX_LEN, dtype=np.int32)
        src = self.embed(source) + self.position(positions)
        tgt = self.embed(decoder_input) + self.position(positions)
        source_padding = source.eq(PAD)             # True (1): a key to ignore
        hidden = self.transformer(
            src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(MAX_LEN),
            src_key_padding_mask=source_padding, tgt_key_padding_mask=decoder_input.eq(PAD),
            memory_key_padding_mask=source_padding)
        return self.out(hidden)                     # (batch, MAX_LEN, VOCAB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default: a tenth of --steps)")
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    args = parser.parse_args()

    ad.manual_seed(0)
    model = Reverser()
    opt = nn.Adam(model.parameters(), lr=args.lr)
    warmup = max(1, args.warmup if args.warmup is not None else args.steps // 10)
    scheduler = lr_scheduler.SequentialLR(opt, [
        lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
        lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.steps - warmup))], milestones=[warmup])
    train = nn.IterableLoader(batches(args.batch, seed=0))

    def train_step(step: ad.Tensor) -> None:
        source, decoder_input, target = train.feeders()
        logits = model(source, decoder_input)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
        ad.Receiver(lambda i, v, lr: print(f"step {int(i) + 1:5d}  loss {float(v):.4f}  lr {float(lr):.2e}"),
                    [step, loss, scheduler.get_last_lr()[0]], name="loss", every=min(20, args.steps))

    ad.ir_for(args.steps, train_step)

    # token accuracy on fresh sequences, with the true previous tokens as decoder input
    source, decoder_input, target = next(batches(256, seed=1))
    predictions = model(ad.Tensor(source, requires_grad=False), ad.Tensor(decoder_input, requires_grad=False))
    accuracy: list[float] = []

    def score(predicted: np.ndarray) -> None:
        real = target != PAD
        accuracy.append(float((predicted == target)[real].mean()))
    ad.Receiver(score, [predictions.argmax(-1)], name="accuracy")

    start = time.perf_counter()
    report = ad.execute(device=args.device, profile=args.profile or None)
    print(f"device {report.device}: {args.steps} steps in {time.perf_counter() - start:.2f} s "
          f"(compile {report.compile_seconds:.2f} s)")
    print(f"token accuracy {accuracy[0]:.4f}")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")


if __name__ == "__main__":
    main()
