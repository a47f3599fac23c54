"""The conformance corpus and its checker (minireft.conformance, `minireft check`).

The corpus is generated deterministically from the NumPy spec (so the spec passes it in
float64 by construction, to a few ulps across CPUs: the regeneration tests); the spec passes it in float32, the JAX
port in reference/ports in both dtypes; the checker fails a wrong backend on exactly the
cases its bug reaches, and says where.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import wrong_backends

import minireft
from minireft import cli, conformance

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "reference" / "cases"
CASES = conformance.load_cases(CASES_DIR)
BY_NAME = {c.name: c for c in CASES}


def all_checks(predicate=lambda case: True) -> set:
    """{(case name, dtype)} for every case the predicate selects, in each dtype it applies to."""
    return {(c.name, dtype) for c in CASES if predicate(c) for dtype in c.dtypes}


def failed_checks(report) -> set:
    return {(r.case, r.dtype) for r in report.failed}


# ---------------------------------------------------------------- the corpus


def test_corpus_has_enough_cases_and_stays_small():
    index = json.loads((CASES_DIR / "index.json").read_text(encoding="utf-8"))
    folders = sorted(p.parent.name for p in CASES_DIR.glob("*/meta.json"))
    assert index["count"] == len(folders) == len(CASES) >= 60
    assert sorted(c["name"] for c in index["cases"]) == folders
    size = sum(f.stat().st_size for f in CASES_DIR.rglob("*") if f.is_file())
    assert size < 5_000_000, f"the corpus holds {size / 1e6:.2f} MB, over the 5 MB budget"


def test_every_case_follows_the_file_format():
    """meta.json names a known operation and this spec version; every array it names is a
    float64 or int64 .npy of the recorded shape; a tolerance that departs from its kind's
    default says why. All cases are read; the first problems are listed."""
    problems = []
    for case in CASES:
        meta = case.meta
        if meta["spec_version"] != minireft.SPEC_VERSION or meta["operation"] not in conformance.OPERATIONS:
            problems.append(f"{case.name}: spec {meta['spec_version']}, operation {meta['operation']!r}")
            continue
        for name in (*meta["args"], *meta["outputs"]):
            array = np.load(case.path / f"{name}.npy", allow_pickle=False)
            if list(array.shape) != meta["shapes"][name] or array.dtype not in (np.float64, np.int64):
                problems.append(f"{case.name}/{name}.npy: {array.dtype} {array.shape}, "
                                f"meta.json says shape {meta['shapes'][name]}")
        if set(meta["tolerance"]) != set(meta["dtypes"]):
            problems.append(f"{case.name}: tolerances for {sorted(meta['tolerance'])}, "
                            f"dtypes {meta['dtypes']}")
        kind = conformance.OPERATIONS[meta["operation"]][1]
        for dtype, tol in meta["tolerance"].items():
            default = conformance.TOLERANCES[kind][dtype]
            if (tol["rtol"], tol["atol"]) != default and not meta.get("tolerance_reason", {}).get(dtype):
                problems.append(f"{case.name} [{dtype}]: tolerance {tol} is not the {kind} default "
                                f"{default} and has no tolerance_reason")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:20])


def test_corpus_covers_the_grid():
    grid = {(m, op, c.meta["shapes"]["h"][-1], c.meta["shapes"]["b"][0], len(c.meta["shapes"]["h"]))
            for c in CASES for m in ("loreft", "direft") for op in ("forward", "vjp")
            if c.meta["operation"] == f"{m}.{op}"}
    for m in ("loreft", "direft"):
        for op in ("forward", "vjp"):
            assert {(d, r) for mm, oo, d, r, _ in grid if (mm, oo) == (m, op)} >= {
                (d, r) for d in (1, 2, 7, 64, 576) for r in (1, 2, 4, 8) if r <= d}
            assert {nd for mm, oo, *_, nd in grid if (mm, oo) == (m, op)} == {1, 2, 3}
    operations = {c.meta["operation"] for c in CASES}
    assert operations == set(conformance.OPERATIONS)
    trajectories = [c.meta["kwargs"] for c in CASES if c.meta["operation"].endswith("trajectory")]
    assert {k.get("retraction") for k in trajectories} >= {"polar", "qr"}
    assert any(k.get("weight_decay", 0) > 0 for k in trajectories)
    assert all(k["steps"] == 5 for k in trajectories)


def test_identity_init_case_returns_h_exactly():
    for name in ("loreft_forward_identity_d64_r8_bnd", "direft_forward_identity_d64_r8_bnd"):
        case = BY_NAME[name]
        assert np.array_equal(case.expected()["out"], case.inputs()["h"])


def _make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts" / "make_vectors.py")
    make_vectors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_vectors)
    return make_vectors


make_vectors = _make_vectors()


def test_regeneration_keeps_the_promise(tmp_path):
    """The corpus regenerated on this machine is the stored one: the same files, JSON and
    integer arrays byte for byte, float64 values within ULPS of their array's scale (BLAS
    kernels chosen by CPU sum in their own order, so last bits may differ between machines)."""
    make_vectors.write(make_vectors.build(), tmp_path)
    problems, worst = make_vectors.same_corpus(CASES_DIR, tmp_path)
    assert not problems, (f"{len(problems)} file(s) break the promise, e.g. {problems[:5]}; "
                          f"rerun scripts/make_vectors.py and commit, or find the nondeterminism")
    assert worst <= make_vectors.ULPS


def test_promise_rejects_a_value_beyond_it_and_a_json_change(tmp_path):
    """same_corpus is not vacuous: a value 2·ULPS ulps off is named with its index and both
    values; one within ULPS passes; a changed byte in meta.json is refused."""
    name = "loreft_forward_d7_r2_nd"
    stored, changed = tmp_path / "stored", tmp_path / "changed"
    shutil.copytree(CASES_DIR / name, stored / name)
    shutil.copytree(CASES_DIR / name, changed / name)
    out = np.load(stored / name / "out.npy")
    step = np.spacing(np.max(np.abs(out)))
    for ulps, fails in ((make_vectors.ULPS // 2, False), (2 * make_vectors.ULPS, True)):
        moved = out.copy()
        moved[1, 3] += ulps * step
        np.save(changed / name / "out.npy", moved)
        problems, worst = make_vectors.same_corpus(stored, changed)
        assert worst == pytest.approx(ulps, rel=1e-6)
        assert bool(problems) == fails, problems
        if fails:
            assert "out.npy" in problems[0] and "index (1, 3)" in problems[0], problems
    np.save(changed / name / "out.npy", out)
    meta = changed / name / "meta.json"
    meta.write_text(meta.read_text(encoding="utf-8").replace('"name"', '"name" ', 1), encoding="utf-8")
    problems, _ = make_vectors.same_corpus(stored, changed)
    assert problems and "meta.json" in problems[0]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b with every dot product correctly rounded (math.fsum): a summation order no BLAS
    kernel uses, so the stored values are compared against a computation of their own."""
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = math.fsum(a[i] * b[:, j])
    return out


def _loreft_exact(h, R, W, b, dout):
    """LoReFT's forward and VJP (reference/SPEC.md) in the row form, on _dot."""
    H, G = h.reshape(-1, h.shape[-1]), dout.reshape(-1, h.shape[-1])
    delta = _dot(H, W.T) + b - _dot(H, R.T)                       # (N, r)
    A = _dot(G, R.T)                                              # (N, r)
    out = H + _dot(delta, R)
    dh = G + _dot(A, W - R)
    dR = _dot(delta.T, G) - _dot(A.T, H)
    return {"out": out.reshape(h.shape), "dh": dh.reshape(h.shape), "dR": dR, "dW": _dot(A.T, H),
            "db": np.array([math.fsum(A[:, k]) for k in range(A.shape[1])])}


@pytest.mark.parametrize("op", ["loreft.forward", "loreft.vjp"])
def test_stored_values_are_within_the_promise_of_correctly_rounded_sums(op):
    """Every LoReFT case (all d, r, shapes, magnitudes) recomputed with correctly rounded dot
    products lands within ULPS of the stored values: the promise covers a summation order
    other than the generator's, which is what another machine's kernel is."""
    worst = 0.0
    cases = [c for c in CASES if c.meta["operation"] == op]
    assert cases
    for case in cases:
        args = case.inputs()
        dout = args.pop("dout", np.ones_like(args["h"]))
        exact = _loreft_exact(args["h"], args["R"], args["W"], args["b"], dout)
        for key, stored in case.expected().items():
            distance = make_vectors.ulps_apart(exact[key], stored, float(np.max(np.abs(stored))))
            worst = max(worst, distance)
            assert distance <= make_vectors.ULPS, f"{case.name}/{key}: {distance:.1f} ulps"
    assert worst > 0, "the recomputation matched bit for bit everywhere: it is not another order"


# ---------------------------------------------------------------- backends that must pass


def test_numpy_spec_passes_every_case_in_float32():
    """float32 inputs through the spec against its own float64 values: the rounding of the
    float32 path stays within the corpus tolerances. (In float64 the spec reproduces the
    corpus within a few ulps: test_regeneration_keeps_the_promise.)"""
    report = conformance.run(minireft, CASES_DIR, dtypes=("float32",))
    problems = [m for r in report.failed for m in r.messages()]
    assert not problems, "\n".join(problems)
    assert len(report.results) == sum("float32" in c.dtypes for c in CASES)


@pytest.mark.torch
def test_torch_mirror_passes_every_case():
    mt = pytest.importorskip("minireft.torch", reason="minireft.torch (needs torch) cannot be imported")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: on a busy machine, idle pool threads cost seconds
    try:
        report = conformance.run(mt, CASES_DIR)
    finally:
        torch.set_num_threads(threads)
    problems = [m for r in report.failed for m in r.messages()]
    assert not problems, "\n".join(problems)
    assert report.adapter == "backend's to_backend/to_numpy"


# The JAX port compiles every function once per shape and dtype (~0.3 s each on CPU), so
# the whole corpus takes minutes (.ci/run runs it all); the suite runs one case of every
# operation, preferring d = 7, r = 2 (and prompt-length cases for the edit), plus the cases
# that test a porting hazard: inputs near float32's range, the exact identity, QR signs.
JAX_PORT = ROOT / "reference" / "ports" / "jax_backend.py"
JAX_PREFER = ("_d7_r2_bnd", "_d7_r2_nd", "_d7_r2", "_r7", "prompts", "mixed", "_d7", "grid")
JAX_HAZARDS = ("loreft_vjp_d64_r4_nd_huge", "loreft_vjp_d64_r4_nd_huge_f64",
               "loreft_forward_identity_d64_r8_bnd", "optim_riemannian_adam_qr_d7_r7",
               "optim_adamw_W_d64_r8_wd")


def jax_cases() -> list:
    chosen = []
    for operation in conformance.OPERATIONS:
        cases = [c for c in CASES if c.meta["operation"] == operation]
        picks = [c for pref in JAX_PREFER for c in cases if pref in c.name] + cases
        chosen += picks[:1]
    return chosen + [BY_NAME[name] for name in JAX_HAZARDS if BY_NAME[name] not in chosen]


@pytest.mark.parametrize("dtype", conformance.DTYPES)
def test_jax_port_passes(dtype):
    pytest.importorskip("jax", reason="the JAX port needs jax (scripts/setup.sh installs it for CPU)")
    backend = conformance.load_backend(str(JAX_PORT))
    adapter = conformance.resolve_adapter(backend)
    cases = [c for c in jax_cases() if dtype in c.dtypes]
    assert {c.meta["operation"] for c in cases} >= (
        {c.meta["operation"] for c in CASES if dtype in c.dtypes}), "an operation has no case here"
    results = [conformance.run_case(backend, case, dtype, adapter) for case in cases]
    problems = [m for r in results if r.failed for m in r.messages()]
    assert not problems, "\n".join(problems)
    assert adapter.name == "backend's to_backend/to_numpy"


# ---------------------------------------------------------------- backends that must fail


def assert_fails_exactly(backend, expected: set):
    report = conformance.run(backend, CASES_DIR)
    failed = failed_checks(report)
    missing, extra = expected - failed, failed - expected
    assert not missing, f"the checker passed {len(missing)} check(s) it must fail: {sorted(missing)[:5]}"
    assert not extra, f"the checker failed {len(extra)} check(s) the bug cannot reach: {sorted(extra)[:5]}"
    return report


def test_transposed_R_fails_every_loreft_case():
    """With R read as d×r, r < d cannot even run (ERROR) and r = d gives wrong values (FAIL).
    Only d = 1 passes, where R = ±1 equals its transpose."""
    expected = all_checks(lambda c: c.meta["operation"].startswith("loreft.") and c.meta["shapes"]["R"][1] > 1)
    report = assert_fails_exactly(wrong_backends.TRANSPOSED_R, expected)
    for r in report.failed:
        (r_, d) = BY_NAME[r.case].meta["shapes"]["R"]
        assert r.verdict == ("FAIL" if r_ == d else "ERROR"), (r.case, r.verdict, r.error)
        assert all(m.startswith(f"{r.case} [{r.dtype}]") for m in r.messages())


def test_flipped_dR_fails_loreft_vjp_cases_only():
    expected = all_checks(lambda c: c.meta["operation"] == "loreft.vjp")
    report = assert_fails_exactly(wrong_backends.FLIPPED_DR, expected)
    for r in report.failed:
        assert [c.output for c in r.comparisons if not c.ok] == ["dR"], r.case
        (message,) = r.messages()
        assert message.startswith(f"{r.case} [{r.dtype}] dR: worst at index (")
        assert "abs err" in message and "rel err 2.000e+00" in message and "tolerance rtol" in message


def test_unsigned_qr_fails_qr_retractions_and_qr_trajectories_only():
    expected = all_checks(lambda c: c.meta["operation"] == "stiefel.retract_qr" or (
        c.meta["operation"] == "optim.riemannian_adam_trajectory" and c.meta["kwargs"]["retraction"] == "qr"))
    assert_fails_exactly(wrong_backends.UNSIGNED_QR, expected)


# ---------------------------------------------------------------- comparison and reporting


def test_compare_reports_the_worst_element():
    expected = np.array([[1.0, -4.0], [2.0, 0.5]])
    got = expected.copy()
    got[1, 0] += 1e-3
    c = conformance.compare("dW", got, expected, rtol=1e-4, atol=0.0)
    assert not c.ok and c.index == (1, 0) and c.got == pytest.approx(2.001)
    assert c.abs_err == pytest.approx(1e-3) and c.rel_err == pytest.approx(1e-3 / 4)
    text = c.describe("some_case", "float32")
    for part in ("some_case [float32] dW", "index (1, 0)", "abs err 1.000e-03", "rel err 2.500e-04",
                 "rtol 0.0001"):
        assert part in text, text
    assert conformance.compare("dW", got, expected, rtol=1e-3, atol=0.0).ok


def test_compare_fails_nan_shape_and_dtype():
    expected = np.ones((2, 3))
    nan = expected.copy()
    nan[0, 2] = np.nan
    c = conformance.compare("out", nan, expected, 1e-5, 0.0)
    assert not c.ok and c.index == (0, 2) and np.isinf(c.abs_err)
    assert not conformance.compare("out", expected.T, expected, 1e-5, 0.0).ok
    c = conformance.compare("out", expected, expected, 1e-5, 0.0, dtype="float32")
    assert not c.ok and "dtype float64, expected float32" in c.describe("x", "float32")
    ints = np.array([0, 1, -1])
    assert not conformance.compare("p", ints + np.array([0, 0, 1]), ints, 1.0, 1.0).ok  # integers: exact


def test_a_backend_that_raises_is_an_error_naming_the_case():
    broken = types.SimpleNamespace(loreft=types.SimpleNamespace(
        forward=lambda *a: (_ for _ in ()).throw(RuntimeError("not implemented yet"))))
    report = conformance.run(broken, CASES_DIR, filters=["loreft_forward_d7_r2_nd"])
    assert [r.verdict for r in report.results] == ["ERROR", "ERROR"]
    assert report.results[0].messages() == [
        "loreft_forward_d7_r2_nd [float64]: RuntimeError: not implemented yet"]
    report = conformance.run(types.SimpleNamespace(), CASES_DIR, filters=["positions_grid"])
    assert "the backend has no positions.intervention_positions" in report.results[0].error


# ---------------------------------------------------------------- adapters


class Box:
    """An array type of a made-up framework: NumPy arrays cannot be passed in."""

    def __init__(self, a):
        self.a = np.asarray(a)


def _boxed(fn):
    def unbox(x):
        if isinstance(x, dict):
            return {k: unbox(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):  # packed_edit's adapters: [(config, params)]
            return type(x)(unbox(v) for v in x)
        if isinstance(x, np.ndarray):
            raise TypeError("this framework takes Box, not numpy.ndarray")
        return x.a if isinstance(x, Box) else x

    def box(x):
        if isinstance(x, (tuple, list)):
            return type(x)(box(v) for v in x)
        if isinstance(x, dict):
            return {k: box(v) for k, v in x.items()}
        return Box(x) if isinstance(x, np.ndarray) else x

    def wrapped(*args, **kwargs):
        return box(fn(*(unbox(a) for a in args), **{k: unbox(v) for k, v in kwargs.items()}))

    return wrapped


def _mirror(wrap, namespace=types.SimpleNamespace):
    """The spec's functions, wrapped, under the contract's names."""
    parts = {}
    for part, names in {"loreft": ("forward", "vjp"), "direft": ("forward", "vjp"),
                        **{kind: ("forward", "vjp") for kind in wrong_backends.FAMILY},
                        "stiefel": ("project_tangent", "retract_polar", "retract_qr", "orthonormality_error"),
                        "optim": ("adamw_step", "riemannian_adam_step")}.items():
        module = namespace(part)
        for name in names:
            setattr(module, name, wrap(getattr(getattr(minireft, part), name)))
        parts[part] = module
    return parts


def test_adapter_protocol_with_the_backends_own_hooks():
    backend = types.SimpleNamespace(**_mirror(_boxed, lambda name: types.SimpleNamespace()),
                                    positions=minireft.positions, edit=_boxed(minireft.edit),
                                    edit_vjp=_boxed(minireft.edit_vjp), packed_edit=_boxed(minireft.packed_edit),
                                    to_backend=Box, to_numpy=lambda b: b.a)
    report = conformance.run(backend, CASES_DIR, dtypes=("float64",))
    assert report.adapter == "backend's to_backend/to_numpy"
    assert report.ok, [m for r in report.failed for m in r.messages()][:3]
    without_hooks = types.SimpleNamespace(**vars(backend))
    del without_hooks.to_backend, without_hooks.to_numpy
    report = conformance.run(without_hooks, CASES_DIR, dtypes=("float64",), filters=["loreft_forward_d7"])
    assert all(r.verdict == "ERROR" and "takes Box" in r.error for r in report.results)


def test_torch_backend_is_detected_without_hooks():
    """A module-based backend that imports torch gets tensors of the dtype under test."""
    torch = pytest.importorskip("torch")
    seen = set()

    def torch_wrap(fn):
        def to_np(x):
            if isinstance(x, dict):
                return {k: to_np(v) for k, v in x.items()}
            if isinstance(x, np.ndarray):
                raise TypeError("a torch backend got a numpy.ndarray")
            if isinstance(x, torch.Tensor):
                seen.add(x.dtype)
                return x.numpy()
            return x

        def to_torch(x):
            if isinstance(x, (tuple, list)):
                return type(x)(to_torch(v) for v in x)
            if isinstance(x, dict):
                return {k: to_torch(v) for k, v in x.items()}
            return torch.from_numpy(x) if isinstance(x, np.ndarray) else x

        return lambda *a, **k: to_torch(fn(*map(to_np, a), **{n: to_np(v) for n, v in k.items()}))

    def module(name):
        m = types.ModuleType(f"torchish.{name}")
        m.torch = torch  # what `import torch` leaves in a module's globals
        return m

    backend = types.ModuleType("torchish")
    for name, part in _mirror(torch_wrap, module).items():
        setattr(backend, name, part)
    backend.positions = minireft.positions
    backend.edit, backend.edit_vjp = torch_wrap(minireft.edit), torch_wrap(minireft.edit_vjp)
    report = conformance.run(backend, CASES_DIR, filters=["loreft", "stiefel", "optim_adamw"])
    assert report.adapter == "torch (cpu)"
    assert report.ok, [m for r in report.failed for m in r.messages()][:3]
    assert seen == {torch.float64, torch.float32, torch.int64}  # the edit cases' masks stay integers


# ---------------------------------------------------------------- the command line


def test_cli_passes_the_spec_and_filters(capsys):
    assert cli.main(["check", "--backend", "minireft", "--filter", "positions", "--filter", "d7_r2_nd"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.endswith("PASS")}
    assert names == {c.name for c in CASES if "positions" in c.name or "d7_r2_nd" in c.name}
    assert "case" in out and "max abs err" in out and "max rel err" in out and "tolerance" in out
    assert cli.main(["check", "--backend", "minireft", "--filter", "no_such_case"]) == 2
    assert cli.main(["check", "--backend", "no_such_module_xyz"]) == 2
    assert cli.main([]) == 2


def test_cli_fails_a_wrong_backend_and_names_the_cases(capsys):
    rc = cli.main(["check", "--backend", "wrong_backends:FLIPPED_DR", "--filter", "loreft_",
                   "--dtype", "float32"])
    out = capsys.readouterr().out
    assert rc == 1
    verdicts = {line.split()[0]: line.split()[-1] for line in out.splitlines()
                if line.startswith("loreft_") and line.split()[1] == "float32"}
    assert verdicts and all(v == ("FAIL" if "_vjp_" in n else "PASS") for n, v in verdicts.items())
    assert "loreft_vjp_d7_r2_nd [float32] dR: worst at index" in out


def test_cli_xfail_file(tmp_path, capsys):
    xfail = tmp_path / "known_gaps.txt"
    xfail.write_text("# our dR has the wrong sign, see issue 12\n"
                     "loreft_vjp_*   # dR sign\n"
                     "loreft_forward_d7_r1_vec float64  # passes: reported as XPASS\n", encoding="utf-8")
    argv = ["check", "--backend", "wrong_backends:FLIPPED_DR", "--filter", "loreft_", "--xfail", str(xfail)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "XFAIL" in out and " FAIL" not in out.replace("XFAIL", "")
    assert "loreft_forward_d7_r1_vec [float64]" in out.split("expected to fail but passed")[1]
    assert "[xfail: dR sign]" in out
    xfail.write_text("loreft_vjp_* float64  # only float64 is known\n", encoding="utf-8")
    assert cli.main(argv) == 1  # float32 still fails
    assert "loreft_vjp_d7_r1_vec [float32] dR" in capsys.readouterr().out.split("failures:")[1]
    xfail.write_text("loreft_vjp_* float16\n", encoding="utf-8")
    assert cli.main(argv) == 2


def test_cli_entry_point_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "minireft.cli", "check", "--backend", "minireft",
                           "--filter", "positions", "-q"], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"checks: {len(all_checks(lambda c: 'positions' in c.name))} pass" in proc.stdout


def test_conformance_and_cli_do_not_import_torch():
    code = "import sys, minireft, minireft.conformance, minireft.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    assert proc.stdout.strip() == "False", proc.stderr
