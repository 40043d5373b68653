"""A small causal transformer language model over characters, trained and sampled in two programs.

    python examples/char_lm.py                        # the Zen of Python (ships with Python)
    python examples/char_lm.py --text notes.txt --steps 1000
    python examples/char_lm.py --device numpy --steps 40 --show-graph

Model: token Embedding + a learned positional embedding, a TransformerEncoder
(post-norm, ReLU) run with `is_causal=True` (each position attends to itself
and earlier positions), and a Linear head to the vocabulary. The default text
is the Zen of Python, the `this` module's rot13 text decoded (no download).

Training (program 1): every (batch, seq+1) window of the text is a sample; a
DataLoader feeds the inputs (the first seq characters) and the targets (the
next character at each position) through two int32 Feeders that stay in step.
The loss is cross_entropy over all batch*seq positions; Adam; the loss is
printed every 20 steps.

Sampling (program 2): persistent tensors belong to the program that made them,
so a fresh model is built inside `with ad.Program()`, gets the trained weights
through `load_state_dict(model.state_dict())`, and generates on the device in
one `ir_for`: the context is a persistent (1, seq) int32 tensor; each iteration
picks the next character from the logits of the last position and shifts it
into the context (`ctx.assign(concat(ctx[:, 1:], next))`); a Receiver hands
each character to the host. Picking is `argmax(logits / temperature + g)`
with Gumbel noise g from a Feeder (the Gumbel-max trick draws from
softmax(logits / temperature)); `--temperature 0` is greedy argmax. The whole
sample is one compile and one run, not one run per character.
"""
from __future__ import annotations

import argparse
import codecs
import time

import numpy as np

import autodiff as ad
import autodiff.nn.functional as F
from autodiff import nn


def zen_of_python() -> str:
    """The `this` module's text, decoded without importing it (importing it prints it)."""
    import importlib.util
    spec = importlib.util.find_spec("this")
    source = open(spec.origin, encoding="utf-8").read()
    encoded = source.split('"""')[1]
    return codecs.decode(encoded, "rot13")


class CharLM(nn.Module):
    """Embedding + learned positions -> causal TransformerEncoder -> Linear logits (B, T, vocab)."""

    def __init__(self, vocab: int, seq: int, d_model: int, heads: int, layers: int, ff: int) -> None:
        super().__init__()
        self.seq = seq
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(seq, d_model)
        self.encoder = nn.TransformerEncoder(num_layers=layers, d_model=d_model, num_heads=heads, ff_dim=ff)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: ad.Tensor) -> ad.Tensor:
        x = self.tokens(idx) + self.positions(ad.iota((self.seq,), 0))
        return self.head(self.encoder(x, is_causal=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="a UTF-8 text file to train on (default: the Zen of Python)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--sample", type=int, default=200, help="characters to generate after training")
    parser.add_argument("--temperature", type=float, default=0.5, help="0 = greedy")
    parser.add_argument("--device", default=None, help="numpy, numpy-proc, opencl or cuda (default: best available)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the run: print the per-kernel table and save a Chrome trace (Perfetto)")
    parser.add_argument("--trace", default="trace.json", help="where --profile saves the trace (default: trace.json)")
    parser.add_argument("--show-graph", action="store_true", help="print the traced training graph")
    args = parser.parse_args()

    text = open(args.text, encoding="utf-8", errors="replace").read() if args.text else zen_of_python()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], np.int32)
    seq, vocab = args.seq, len(chars)
    if len(ids) < seq + args.batch + 1:
        raise SystemExit(f"the text has {len(ids)} characters; need at least seq + batch + 1 = {seq + args.batch + 1}")
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq + 1)
    loader = nn.DataLoader(windows[:, :-1], windows[:, 1:], batch_size=args.batch, shuffle=True, seed=0)
    print(f"text: {len(text)} characters, vocabulary {vocab}, {len(windows)} windows of {seq}")

    # --- program 1: training ------------------------------------------------
    ad.manual_seed(0)
    model = CharLM(vocab, seq, args.d_model, args.heads, args.layers, 2 * args.d_model)
    opt = nn.Adam(model.parameters(), lr=args.lr)
    losses: list[float] = []

    def show_loss(i: np.ndarray, loss: np.ndarray) -> None:
        losses.append(float(loss))
        print(f"step {int(i) + 1:5d}  loss {float(loss):.4f}")

    def train_step(step: ad.Tensor) -> None:
        xb, yb = loader.feeders()
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(args.batch * seq, vocab), yb.reshape(args.batch * seq))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ad.Receiver(show_loss, [step, loss], name="loss", every=min(20, args.steps))

    ad.ir_for(args.steps, train_step)
    if args.show_graph:
        ad.print_graph()
    start = time.perf_counter()
    report = ad.execute(device=args.device, profile=args.profile or None)
    print(f"device {report.device}: {args.steps} steps in {time.perf_counter() - start:.2f} s "
          f"(compile {report.compile_seconds:.2f} s, run {report.run_seconds:.2f} s)")
    trained = model.state_dict()

    # --- program 2: sampling with the trained weights -----------------------
    rng = np.random.default_rng(1)
    offset = int(rng.integers(0, len(ids) - seq))
    prompt = ids[offset:offset + seq]
    sampled: list[int] = []
    with ad.Program() as sampler:
        lm = CharLM(vocab, seq, args.d_model, args.heads, args.layers, 2 * args.d_model)
        lm.load_state_dict(trained)
        context = ad.Tensor(prompt.reshape(1, seq), name="context", requires_grad=False)

        def gumbel() -> np.ndarray:
            return -np.log(-np.log(rng.uniform(1e-12, 1.0, vocab))).astype(np.float32)

        def sample_step() -> None:
            logits = lm(context)[0, seq - 1]
            if args.temperature > 0:
                logits = logits / args.temperature + ad.Feeder(gumbel, (vocab,), name="gumbel")
            following = logits.argmax(-1)
            context.assign(ad.concat([context[:, 1:], following.reshape(1, 1)], dim=1))
            ad.Receiver(lambda c: sampled.append(int(c)), [following], name="sample")

        ad.ir_for(args.sample, sample_step)
        sampler.execute(device=args.device)
    print("--- prompt ---")
    print("".join(chars[i] for i in prompt))
    print("--- sample ---")
    print("".join(chars[i] for i in sampled))
    print("---")
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    print(f"final loss {last:.4f} (first reported {first:.4f})")
    if args.profile:
        print(report.profile_table())
        report.save_trace(args.trace)
        print(f"trace saved to {args.trace}")


if __name__ == "__main__":
    main()
