"""Graph passes: each pass on small before/after graphs compared structurally; the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

import autodiff as ad
from autodiff.ir.ops import Op
from autodiff.opt import cse, mark_in_place, optimize, prune, simplify
from graph_helpers import ops_of, structure, trace


def _receive(*tensors):
    ad.Receiver(lambda *a: None, list(tensors), name="out")


def _x(shape=(2, 3)):
    return ad.Tensor(np.ones(shape, np.float32), name="x")


# --- prune ----------------------------------------------------------------------------

def test_prune_drops_unused_values_and_gradients():
    def before():
        x = _x()
        loss = (x * x).sum()
        loss.backward()          # x.grad is never used
        _receive(loss)

    def expected():
        x = _x()
        _receive((x * x).sum())

    assert structure(prune(trace(before)).root) == structure(trace(expected).root)


def test_prune_keeps_unused_feeder_and_drops_empty_loop():
    def before():
        ad.Feeder(lambda: np.zeros(2, np.float32), (2,), name="f")
        ad.ir_for(3, lambda: _x() * 2)    # computes nothing anyone needs

    graph = prune(trace(before))
    assert ops_of(graph) == ["feeder"]


def test_prune_keeps_loop_with_update():
    def before():
        p = _x()
        ad.ir_for(3, lambda: p.add_(1))

    assert ops_of(prune(trace(before))) == ["for", "read", "const", "add", "assign"]


# --- simplify ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, before, expected", [
    ("x*1+0", lambda x: x * 1 + 0, lambda x: x),
    ("1*x-0", lambda x: (1 * x) - 0, lambda x: x),
    ("x/1", lambda x: x / 1, lambda x: x),
    ("neg neg", lambda x: -(-x), lambda x: x),
    ("x*-1", lambda x: x * -1, lambda x: -x),
    ("pow 2", lambda x: x ** 2, lambda x: x * x),
    ("pow 0.5", lambda x: x ** 0.5, lambda x: x.sqrt()),
    ("pow -1", lambda x: x ** -1, lambda x: x.reciprocal()),
    ("pow 1", lambda x: x ** 1, lambda x: x),
    ("div by power of two", lambda x: x / 4, lambda x: x * 0.25),
    ("permute of permute", lambda x: x.unsqueeze(0).permute(2, 0, 1).permute(1, 2, 0),
     lambda x: x.unsqueeze(0)),
    ("reshape of reshape", lambda x: x.reshape(3, 2).reshape(6), lambda x: x.reshape(6)),
    ("detach", lambda x: x.detach() + 1, lambda x: x + 1),
    ("sum of size-1 axis", lambda x: x.unsqueeze(0).sum(0, keepdim=True), lambda x: x.unsqueeze(0)),
    ("const folding", lambda x: (ad.full_like(x, 2.0) * 3 + 1) + x, lambda x: ad.full_like(x, 7.0) + x),
    ("where same branches", lambda x: ad.where(x.gt(0), x, x), lambda x: x),
])
def test_simplify_rewrites(name, before, expected):
    got = simplify(prune(trace(lambda: _receive(before(_x())))))
    want = prune(trace(lambda: _receive(expected(_x()))))
    assert structure(prune(got).root) == structure(want.root), name


@pytest.mark.parametrize("name, program", [
    ("x*0 (wrong for inf/nan)", lambda x: x * 0),
    ("x-x (wrong for inf)", lambda x: x - x),
    ("x/3 (1/3 is inexact)", lambda x: x / 3),
    ("exp(log x) (inexact)", lambda x: x.log().exp()),
    ("recip(recip x) (inexact)", lambda x: x.reciprocal().reciprocal()),
])
def test_simplify_refuses_inexact_rewrites(name, program):
    graph = prune(trace(lambda: _receive(program(_x()))))
    assert structure(prune(simplify(graph)).root) == structure(graph.root), name


def test_simplify_keeps_ieee_results():
    values = np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan], np.float32)
    results = {}
    for disabled in (set(), {"simplify"}):
        with ad.Program() as p:
            x = ad.Tensor(values)
            got = []
            ad.Receiver(lambda *a: got.extend(a), [x * 1 + 0, -(-x), x ** 2, x / 4, x ** 1, x ** 0])
            p.execute(device="numpy", disable=disabled)
        results[frozenset(disabled)] = got
    for a, b in zip(*results.values()):
        np.testing.assert_array_equal(a, b)


# --- cse ----------------------------------------------------------------------------------

def test_cse_merges_repeated_subexpressions():
    def before():
        x = _x()
        _receive((x * 2).exp() + (x * 2).exp())

    def expected():
        x = _x()
        e = (x * 2).exp()
        _receive(e + e)

    assert structure(cse(trace(before)).root) == structure(cse(trace(expected)).root)
    assert ops_of(prune(cse(trace(before)))).count("exp") == 1


def test_cse_merges_commutative_operands():
    def before():
        a, b = _x(), _x()
        _receive(a * b - b * a)
    assert ops_of(prune(cse(trace(before)))).count("mul") == 1


def test_cse_never_merges_feeders_or_random():
    def before():
        f = lambda: np.zeros(2, np.float32)  # noqa: E731
        _receive(ad.Feeder(f, (2,), name="a") + ad.Feeder(f, (2,), name="a"))
        _receive(ad.random_uniform((2,)) + ad.random_uniform((2,)))
    ops = ops_of(cse(trace(before)))
    assert ops.count("feeder") == 2 and ops.count("random") == 2


def test_cse_keeps_reads_before_and_after_update_apart():
    def before():
        p = _x()
        a = p * 2
        p.add_(1)
        _receive(a, p * 2)
    ops = ops_of(prune(cse(trace(before))))
    assert ops.count("read") == 2 and ops.count("mul") == 2


def test_cse_hoists_invariant_read_into_loop_only_without_update():
    def before():
        p, q = _x(), ad.Tensor(np.zeros((2, 3), np.float32), name="q")
        _receive(p * 3)
        ad.ir_for(2, lambda: _receive(p * 3, q * 3))   # p unchanged in the loop: reuse outer p*3
        ad.ir_for(2, lambda: (q.add_(p * 3), _receive(q * 3)))
    graph = prune(cse(trace(before)))
    loops = [n for n in graph.root.nodes if n.op is Op.FOR]
    body_ops = [n.op.value for n in loops[0].args.body.nodes]
    assert body_ops.count("mul") == 1          # only q*3 is computed in the first body
    assert [n.op.value for n in loops[1].args.body.nodes].count("read") == 2  # q before/after update


# --- in-place marking ----------------------------------------------------------------------

def _assign_flags(graph) -> list[bool]:
    return [n.args.in_place for n in graph.root.walk() if n.op is Op.ASSIGN]


def test_sgd_update_is_in_place():
    def before():
        w = _x()
        loss = (w * w).sum()
        loss.backward()
        w.sub_(w.grad * 0.1)
    assert _assign_flags(mark_in_place(prune(trace(before)))) == [True]


def test_update_with_later_reader_of_old_value_is_not_in_place():
    def before():
        w = _x()
        old = w * 1       # simplify makes this the READ of w itself
        w.assign(w + 1)
        _receive(old)     # so the old value is read after the update
    assert _assign_flags(mark_in_place(trace(before))) == [True]   # old is its own buffer
    assert _assign_flags(mark_in_place(simplify(trace(before)))) == [False]


def test_loop_invariant_read_used_inside_updating_loop_is_not_in_place():
    def before():
        w = _x()
        old = w * 1                                  # taken before the loop
        ad.ir_for(2, lambda: w.assign(old + 1))     # every iteration reads it again
    assert _assign_flags(mark_in_place(trace(before))) == [True]
    assert _assign_flags(mark_in_place(simplify(trace(before)))) == [False]


# --- pipeline -------------------------------------------------------------------------------

def test_pipeline_records_and_disable():
    def build():
        x = _x()
        (x * 1).sum().backward()
        _receive((x * 2) + (x * 2))

    graph = trace(build)
    _, records = optimize(graph)
    assert [r.name for r in records] == ["prune", "simplify", "cse", "prune", "inplace"]
    assert records[0].nodes_after < records[0].nodes_before
    _, records = optimize(graph, disable={"cse", "prune"})
    assert [r.name for r in records] == ["simplify", "inplace"]


def test_execute_reports_passes_and_rejects_unknown_switch():
    x = _x()
    _receive(x * 1)
    report = ad.execute(device="numpy")
    assert [p["name"] for p in report.passes][:3] == ["prune", "simplify", "cse"]
    with pytest.raises(ValueError, match="unknown names"):
        ad.execute(device="numpy", disable={"fusion_of_everything"})


def test_dump_passes_prints_each_pass(capsys):
    _receive(_x() * 1)
    ad.execute(device="numpy", dump_passes=True)
    err = capsys.readouterr().err
    assert "after prune" in err and "after cse" in err


def test_passes_leave_the_traced_program_unchanged():
    x = _x()
    _receive(x * 1 + 0)
    before = structure(ad.current_program().root)
    ad.execute(device="numpy")
    assert structure(ad.current_program().root) == before


def test_print_graph_opt_stage(capsys):
    x = _x()
    _receive(x * 1 + 0)
    text = ad.print_graph("opt")
    assert text.startswith("optimized graph:") and "mul" not in text


@pytest.mark.parametrize("view", ["reshape", "transpose", "slice"])
def test_a_view_taken_before_an_update_sees_the_old_value(device, view):
    # found by test_devices_random.py: a view is an access expression into the variable's
    # storage, evaluated where it is used, so its users count as users of the read
    p = ad.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), name="p")
    before = p.numpy().copy()
    v = {"reshape": lambda: p.reshape(-1), "transpose": lambda: p.T, "slice": lambda: p[1:, ::2]}[view]()
    p.sub_(p * 0.5)
    got = []
    ad.Receiver(lambda a: got.append(a), [v])
    ad.execute(device)
    want = {"reshape": before.reshape(-1), "transpose": before.T, "slice": before[1:, ::2]}[view]
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(p.numpy(), before * 0.5)
