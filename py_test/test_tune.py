"""The matmul autotuner (backends/tuning.py): candidates, the stored results, levels, the
command that tunes a script ahead, and that a tuned program computes what the rules' does."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autodiff as ad
from autodiff.backends import tuning
from autodiff.backends.opencl import opencl_available
from autodiff.codegen import matmul_source as ms
from autodiff.schedule.tiling import DOT, MatmulShape, Tiling, choose_tiling, device_vector_width

ROOT = Path(__file__).resolve().parent.parent
needs_opencl = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AUTODIFF_CACHE_DIR", str(tmp_path))
    return tmp_path


def opencl_tuner(level: int) -> tuning.Tuner:
    import pyopencl as cl
    from autodiff.backends.opencl import choose_device
    device = choose_device(None)
    context = cl.Context([device])
    return tuning.Tuner(context, cl.CommandQueue(context), "test device", device.native_vector_width_float, level)


@pytest.mark.parametrize("shape", [MatmulShape(1, 1, 1), MatmulShape(17, 33, 19), MatmulShape(512, 128, 512),
                                   MatmulShape(17, 33, 19, b_transposed=True),
                                   MatmulShape(128, 512, 512, a_transposed=True),
                                   MatmulShape(64, 32, 64, batch=32, a_transposed=True)])
@pytest.mark.parametrize("width", [4, 8, 16])
def test_candidates_start_with_the_rule_and_all_render(shape: MatmulShape, width: int) -> None:
    candidates = tuning.candidate_tilings(shape, width)
    assert candidates[0] == choose_tiling(shape.m, shape.n, shape.k, shape.a_transposed, shape.b_transposed, width)
    assert len(candidates) == len(set(candidates)) >= 1
    for tiling in candidates:
        ms.render_matmul(shape, tiling=tiling)   # raises on a tiling it cannot render
        assert tiling.vector_width in (width, max(4, width // 2))
        if tiling.strategy == DOT:
            assert shape.b_transposed and not shape.a_transposed


def test_the_vector_width_comes_from_the_device() -> None:
    assert [device_vector_width(n) for n in (1, 4, 8, 16, 32)] == [4, 4, 8, 16, 16]


def test_levels(monkeypatch) -> None:
    for text, level in (("0", 0), ("1", 1), ("2", 2)):
        monkeypatch.setenv("AUTODIFF_TUNE", text)
        assert tuning.tune_level() == level
        assert tuning.tune_level(frozenset({"autotune"})) == 0
    monkeypatch.setenv("AUTODIFF_TUNE", "fast")
    with pytest.raises(ValueError, match="AUTODIFF_TUNE must be 0, 1 or 2"):
        tuning.tune_level()


def test_an_unreadable_or_foreign_file_reads_as_empty(cache: Path) -> None:
    path = cache / tuning.FILE_NAME
    for text in ("{not json", "[1, 2]", json.dumps({"version": 99, "devices": {}}), ""):
        path.write_text(text)
        assert tuning.read_results() == {}
    path.write_bytes(b"\xff\xfe\x00")
    assert tuning.read_results() == {}


def test_a_damaged_entry_gives_the_rule(cache: Path) -> None:
    assert tuning.tiling_from({"tiling": {"strategy": "outer"}}) is None
    assert tuning.tiling_from({"nothing": 1}) is None
    bad_width = {"tiling": {"strategy": "outer", "rows": 2, "cols": 24, "local_size": [1, 1], "vector_width": 12}}
    assert tuning.tiling_from(bad_width) is None
    good = Tiling("outer", 2, 16, (1, 1), vector_width=16)
    assert tuning.tiling_from(json.loads(json.dumps({"tiling": tuning.asdict(good)}))) == good


def test_a_stored_tiling_the_generator_cannot_render_gives_the_rule(cache: Path) -> None:
    shape = MatmulShape(40, 48, 72)
    dot = Tiling(DOT, 2, 4, (8, 1), vector_width=16)   # the dot strategy needs B stored transposed
    tuning.write_result("test device", tuning.shape_key(shape), {"tiling": tuning.asdict(dot)})
    tuner = tuning.Tuner(None, None, "test device", 16, 1)
    assert tuner.choose(shape) == tuner.rule(shape) != dot


@needs_opencl
def test_a_search_is_stored_and_read_back_at_level_one_only(cache: Path) -> None:
    shape = MatmulShape(2, 40, 24, a_transposed=True)   # 6 candidates: a quick search
    tuner = opencl_tuner(2)
    chosen = tuner.choose(shape)
    assert tuner.searched == 1
    assert tuner.choose(shape) == chosen and tuner.searched == 1   # once per compile
    entry = tuning.read_results()["test device"][tuning.shape_key(shape)]
    assert tuning.tiling_from(entry) == chosen
    assert entry["seconds"] <= entry["rule_seconds"] and len(entry["candidates"]) > 1
    again = opencl_tuner(2)
    assert again.choose(shape) == chosen and again.searched == 0   # a later compile: stored
    assert opencl_tuner(1).choose(shape) == chosen
    assert opencl_tuner(0).choose(shape) == opencl_tuner(0).rule(shape)   # level 0 reads nothing
    other = MatmulShape(3, 40, 24, a_transposed=True)
    level_one = opencl_tuner(1)
    assert level_one.choose(other) == level_one.rule(other) and level_one.searched == 0


@needs_opencl
def test_a_candidate_with_wrong_numbers_is_never_chosen(cache: Path, monkeypatch) -> None:
    """Every candidate but the rule is made to compute the negated product, and so is
    dropped before it is timed, however fast it is."""
    render = tuning.render_matmul

    def wrong(shape, tiling=None, name=None, **kwargs):
        spec = render(shape, tiling=tiling, name=name, **kwargs)
        if name == "tune0":
            return spec
        negated = re.sub(r"\b(acc\w*) \+= ", r"\1 -= ", spec.source)   # not the loops' steps
        assert negated != spec.source
        return ms.MatmulKernel(**{**spec.__dict__, "source": negated})
    monkeypatch.setattr(tuning, "render_matmul", wrong)
    tuner = opencl_tuner(2)
    shape = MatmulShape(2, 32, 40)   # 5 candidates
    assert tuner.choose(shape) == tuner.rule(shape)
    entry = tuning.read_results()["test device"][tuning.shape_key(shape)]
    assert len(entry["candidates"]) == 1


@needs_opencl
def test_a_candidate_that_does_not_build_is_left_out(cache: Path, monkeypatch) -> None:
    render = tuning.render_matmul

    def broken(shape, tiling=None, name=None, **kwargs):
        spec = render(shape, tiling=tiling, name=name, **kwargs)
        if name != "tune1":
            return spec
        return ms.MatmulKernel(**{**spec.__dict__, "source": spec.source + "\nnot a declaration;\n"})
    monkeypatch.setattr(tuning, "render_matmul", broken)
    tuner = opencl_tuner(2)
    shape = MatmulShape(2, 32, 40)
    candidates = tuning.candidate_tilings(shape, tuner.vector_width)
    tuner.choose(shape)
    timed = tuning.read_results()["test device"][tuning.shape_key(shape)]["candidates"]
    assert str(candidates[1]) not in timed and len(timed) == len(candidates) - 1


def _train(disable: frozenset[str]) -> tuple[list[float], np.ndarray]:
    ad.reset()
    rng = np.random.default_rng(0)
    w1 = ad.Tensor(rng.standard_normal((160, 128)).astype(np.float32) * 0.1, name="w1")
    w2 = ad.Tensor(rng.standard_normal((128, 64)).astype(np.float32) * 0.1, name="w2")
    data = rng.standard_normal((96, 160)).astype(np.float32)
    losses: list[float] = []

    def step() -> None:
        x = ad.Feeder(lambda: data, shape=data.shape, name="x")
        loss = ((x @ w1).relu() @ w2).square().mean()
        w1.grad = w2.grad = None
        loss.backward()
        w1.sub_(w1.grad * 0.1)
        w2.sub_(w2.grad * 0.1)
        ad.Receiver(lambda v: losses.append(float(v)), [loss], name="loss")
    ad.ir_for(3, step)
    ad.compile(device="opencl", disable=disable).run()
    return losses, w1.numpy()


@needs_opencl
def test_other_tilings_compute_what_the_rules_do(cache: Path, monkeypatch) -> None:
    """Whatever the tuner picks, the program's numbers are the rules' (within float32
    rounding): here every product gets the last of its candidates, not the rule."""
    used: list[tuple[Tiling, Tiling]] = []

    def last_candidate(self, shape: MatmulShape) -> Tiling:
        tiling = tuning.candidate_tilings(shape, self.vector_width)[-1]
        used.append((tiling, self.rule(shape)))
        return tiling
    monkeypatch.setattr(tuning.Tuner, "choose", last_candidate)
    other_losses, other_w1 = _train(frozenset())
    assert len(used) >= 3 and all(tiling != rule for tiling, rule in used)
    monkeypatch.undo()
    rules_losses, rules_w1 = _train(frozenset({"autotune"}))
    np.testing.assert_allclose(other_losses, rules_losses, rtol=1e-5)
    np.testing.assert_allclose(other_w1, rules_w1, rtol=1e-5, atol=1e-6)


SCRIPT = """
import numpy as np, autodiff as ad
w = ad.Tensor(np.ones((160, 96), np.float32), name="w")
x = ad.Tensor(np.ones((200, 160), np.float32))
y = (x @ w).sum()
ad.compile(device="opencl").run()
assert y.item() == 200 * 160 * 96
"""


@needs_opencl
@pytest.mark.slow   # a real search, in a new process: ~18 s with PoCL's cache cold
def test_the_tune_command_tunes_a_script_ahead(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, AUTODIFF_CACHE_DIR=str(cache), AUTODIFF_TUNE="0")

    def tune(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "autodiff.tune", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout
    tune(str(script))
    devices = tuning.read_results()
    assert [json.loads(k)["m"] for e in devices.values() for k in e] == [200]
    assert "1x200x96x160" in tune("--show")
    assert "removed" in tune("--clear")
    assert tuning.read_results() == {}


def test_the_tune_command_names_a_missing_script(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autodiff.tune", str(tmp_path / "missing.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no script" in proc.stderr and "missing.py" in proc.stderr
