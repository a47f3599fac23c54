"""Hypothesis strategies for the spec's property tests, and the one comparison helper.

Every property test draws its inputs from here. Arrays are not drawn element by
element (slow at d = 576, and shrinking a 576×576 matrix teaches nothing): a
strategy draws the shape, the dtype and an integer seed, and the case builds its
arrays with numpy.random.default_rng(seed). A failing example therefore prints as
a handful of integers that rebuild it exactly.

Sections: sizes and dtypes · cases (LoReFT, DiReFT, the rest of the family, Stiefel) · configs and
positions (and batches for the in-model edit) · edge examples · comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import example
from hypothesis import strategies as st

from minireft import ReftConfig, consreft, direft, lobireft, loreft, noreft, ortho_direft
from minireft.stiefel import random_stiefel

# ---------------------------------------------------------------- sizes and dtypes

MAX_D = 576  # SmolLM2-135M's hidden size: the largest model the project runs
DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
# Magnitude of the hidden states: the tolerances scale with it, so it must vary.
scales = st.sampled_from((1.0, 1e-3, 1e3))


def unit_roundoff(dtype) -> float:
    """u = 2^-53 (float64) or 2^-24 (float32): half the spacing of floats near 1."""
    return float(np.finfo(dtype).eps) / 2


@st.composite
def rank_dims(draw, max_d: int = MAX_D) -> tuple[int, int]:
    """(r, d) with 1 <= r <= d <= max_d; the corners r = 1, r = d, d = 1 and d = max_d
    are drawn often, not left to chance."""
    d = draw(st.one_of(st.sampled_from((1, 2, max_d)), st.integers(1, max_d)))
    r = draw(st.one_of(st.sampled_from((1, d)), st.integers(1, d)))
    return r, d


# Leading shape of h: a single vector (d,), a row batch (n, d), a sequence batch (b, n, d).
leads = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 8)),
    st.tuples(st.integers(1, 3), st.integers(1, 5)),
)


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One seeded input: sizes, dtype, leading shape of h, seed and scale of h."""

    r: int
    d: int
    dtype: np.dtype
    lead: tuple[int, ...]
    seed: int
    scale: float = 1.0

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def h(self) -> np.ndarray:
        """(*lead, d) hidden states, entries ~ scale · N(0, 1)."""
        return (self.scale * self.rng(1).standard_normal((*self.lead, self.d))).astype(self.dtype)

    def dout(self) -> np.ndarray:
        """(*lead, d) cotangent, entries ~ N(0, 1)."""
        return self.rng(2).standard_normal((*self.lead, self.d)).astype(self.dtype)

    def loreft(self) -> dict[str, np.ndarray]:
        """{R, W, b}: R Haar-random on St(r, d); W ~ N(0, 1/d) so W h ~ scale; b ~ scale · N(0, 1)."""
        rng = self.rng(3)
        R = random_stiefel(self.r, self.d, rng)  # (r, d)
        W = rng.standard_normal((self.r, self.d)) / np.sqrt(self.d)  # (r, d)
        b = self.scale * rng.standard_normal(self.r)  # (r,)
        return {k: v.astype(self.dtype) for k, v in {"R": R, "W": W, "b": b}.items()}

    def direft(self) -> dict[str, np.ndarray]:
        """{W1, W2, b}: W1 ~ N(0, 1/d), W2 Haar-random orthonormal rows (as the init), b ~ scale · N(0, 1)."""
        rng = self.rng(4)
        W1 = rng.standard_normal((self.r, self.d)) / np.sqrt(self.d)  # (r, d)
        W2 = random_stiefel(self.r, self.d, rng)  # (r, d)
        b = self.scale * rng.standard_normal(self.r)  # (r,)
        return {k: v.astype(self.dtype) for k, v in {"W1": W1, "W2": W2, "b": b}.items()}

    def noreft(self) -> dict[str, np.ndarray]:
        """{W1, W2, b}: W1, W2 ~ N(0, 1/d) (W2 not orthonormal: NoReFT has no constraint),
        b ~ scale · N(0, 1)."""
        rng = self.rng(5)
        W1 = rng.standard_normal((self.r, self.d)) / np.sqrt(self.d)  # (r, d)
        W2 = rng.standard_normal((self.r, self.d)) / np.sqrt(self.d)  # (r, d)
        b = self.scale * rng.standard_normal(self.r)  # (r,)
        return {k: v.astype(self.dtype) for k, v in {"W1": W1, "W2": W2, "b": b}.items()}

    def consreft(self) -> dict[str, np.ndarray]:
        """{R, b}: R Haar-random on St(r, d), b ~ scale · N(0, 1)."""
        rng = self.rng(6)
        R = random_stiefel(self.r, self.d, rng)  # (r, d)
        b = self.scale * rng.standard_normal(self.r)  # (r,)
        return {"R": R.astype(self.dtype), "b": b.astype(self.dtype)}

    def lobireft(self) -> dict[str, np.ndarray]:
        """{R, b}: as consreft (the same two parameters)."""
        return self.consreft()

    def ortho_direft(self) -> dict[str, np.ndarray]:
        """{R, W, b}: as loreft (the same three parameters)."""
        return self.loreft()

    def params(self, kind: str) -> dict[str, np.ndarray]:
        """The parameters of intervention `kind` (a key of FAMILY)."""
        return getattr(self, kind)()


# config.intervention -> its spec module: every intervention the property tests cover.
FAMILY = {"loreft": loreft, "direft": direft, "noreft": noreft, "consreft": consreft,
          "lobireft": lobireft, "ortho_direft": ortho_direft}


@st.composite
def cases(draw, max_d: int = MAX_D, dtype=None, lead=None) -> Case:
    """An intervention case (any kind of FAMILY); dtype and lead may be pinned (float64 for the VJP checks)."""
    r, d = draw(rank_dims(max_d))
    return Case(
        r=r,
        d=d,
        dtype=np.dtype(dtype) if dtype is not None else draw(dtypes),
        lead=lead if lead is not None else draw(leads),
        seed=draw(seeds),
        scale=draw(scales),
    )


@dataclass(frozen=True)
class StiefelCase:
    """A point R of St(r, d) with an ambient direction G and a tangent direction ξ at R."""

    r: int
    d: int
    dtype: np.dtype
    seed: int

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def R(self) -> np.ndarray:
        """(r, d), orthonormal rows, computed in float64 then cast."""
        return random_stiefel(self.r, self.d, self.rng(1), dtype=self.dtype)

    def ambient(self) -> np.ndarray:
        """(r, d), entries ~ N(0, 1): any Euclidean gradient."""
        return self.rng(2).standard_normal((self.r, self.d)).astype(self.dtype)

    def tangent(self) -> np.ndarray:
        """(r, d) tangent at R with unit Frobenius norm (zero when r = d = 1, where the
        tangent space is {0}), built from the parametrisation of T_R St(r, d), independently
        of project_tangent:  ξ = Ω R + B (I − RᵀR),  Ω skew (r, r), B any (r, d).
        Both parts are O(1), so normalising does not amplify rounding."""
        R = self.R().astype(np.float64)
        rng = self.rng(3)
        A = rng.standard_normal((self.r, self.r))
        xi = 0.5 * (A - A.T) @ R  # (r, d): Ω R, moves within the row space
        if self.r < self.d:  # for r = d, I − RᵀR = 0 and this term would be pure rounding
            B = rng.standard_normal((self.r, self.d))
            xi = xi + (B - (B @ R.T) @ R)  # (r, d): B (I − RᵀR), leaves the row space
        norm = np.linalg.norm(xi)
        return (xi / norm if norm > 0 else xi).astype(self.dtype)


@st.composite
def stiefel_cases(draw, max_d: int = MAX_D, dtype=None) -> StiefelCase:
    r, d = draw(rank_dims(max_d))
    return StiefelCase(
        r=r, d=d, dtype=np.dtype(dtype) if dtype is not None else draw(dtypes), seed=draw(seeds)
    )


# ---------------------------------------------------------------- configs and positions


@st.composite
def position_strings(draw) -> tuple[str, int, int]:
    """(text, p, s) for a valid positions string: 'f{p}+l{s}', 'f{p}' or 'l{s}'."""
    form = draw(st.sampled_from(("both", "prefix", "suffix")))
    p = draw(st.integers(0 if form == "both" else 1, 12))
    s = draw(st.integers(0 if form == "both" else 1, 12))
    if form == "both":
        if p + s == 0:
            s = 1
        return f"f{p}+l{s}", p, s
    if form == "prefix":
        return f"f{p}", p, 0
    return f"l{s}", 0, s


@st.composite
def configs(draw) -> ReftConfig:
    """Any valid ReftConfig."""
    return ReftConfig(
        layers=tuple(draw(st.sets(st.integers(0, 40), min_size=1, max_size=5))),
        rank=draw(st.integers(1, 64)),
        positions=draw(position_strings())[0],
        tied=draw(st.booleans()),
        intervention=draw(st.sampled_from(("loreft", "direft"))),
        init=draw(st.sampled_from(("paper", "identity"))),
        dropout=draw(st.sampled_from((0.0, 0.05, 0.5))),
        dtype=draw(st.sampled_from(("float32", "float64"))),
        module_path=draw(st.sampled_from((None, "model.layers", "transformer.h"))),
        position_rule=draw(st.sampled_from(("paper", "pyreft"))),
    )


@dataclass(frozen=True)
class EditCase:
    """A batch for the in-model edit: rows of `counts` real tokens padded on `sides` to width
    `length`, optional prompt lengths, a config, and one parameter set per group."""

    counts: tuple[int, ...]
    sides: tuple[str, ...]  # "left" or "right", one per row
    length: int
    prompts: tuple[int, ...] | None
    config: ReftConfig
    d: int
    dtype: np.dtype
    seed: int

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def mask(self, sides=None, length=None) -> np.ndarray:
        """(B, L) int64: row b's counts[b] ones at the left or right end."""
        sides, length = sides or self.sides, length or self.length
        mask = np.zeros((len(self.counts), length), dtype=np.int64)
        for b, (count, side) in enumerate(zip(self.counts, sides)):
            start = length - count if side == "left" else 0
            mask[b, start:start + count] = 1
        return mask

    def prompt_lengths(self):
        return None if self.prompts is None else np.array(self.prompts, dtype=np.int64)

    def h(self) -> np.ndarray:
        """(B, L, d) ~ N(0, 1); padding columns hold values too (a model's pad states)."""
        return self.rng(1).standard_normal((len(self.counts), self.length, self.d)).astype(self.dtype)

    def dout(self) -> np.ndarray:
        return self.rng(2).standard_normal((len(self.counts), self.length, self.d)).astype(self.dtype)

    def params(self, init: str = "paper") -> dict:
        """{group: {param: array}}: the spec's init (the identity one when init="identity")."""
        math = FAMILY[self.config.intervention]
        rng = self.rng(3)
        return {g: math.init(self.d, self.config.rank, rng, kind=init, dtype=self.dtype)
                for g in self.config.groups}


@st.composite
def edit_cases(draw, dtype=None, max_rows: int = 4, max_tokens: int = 12,
               interventions=("loreft", "direft")) -> EditCase:
    """Rows of 1..max_tokens real tokens, each padded left or right, prompts sometimes shorter
    than the real tokens; any positions string, tied or not, one of `interventions` (keys of
    FAMILY), r <= d <= 16."""
    counts = tuple(draw(st.lists(st.integers(1, max_tokens), min_size=1, max_size=max_rows)))
    sides = tuple(draw(st.lists(st.sampled_from(("left", "right")), min_size=len(counts),
                                max_size=len(counts))))
    length = max(counts) + draw(st.integers(0, 2))
    prompts = None
    if draw(st.booleans()):
        prompts = tuple(draw(st.integers(1, c)) for c in counts)
    r, d = draw(rank_dims(16))
    config = ReftConfig(layers=(0,), rank=r, positions=draw(position_strings())[0],
                        tied=draw(st.booleans()), intervention=draw(st.sampled_from(interventions)),
                        position_rule=draw(st.sampled_from(("paper", "pyreft"))))
    return EditCase(counts, sides, length, prompts, config, d,
                    np.dtype(dtype) if dtype is not None else draw(dtypes), draw(seeds))


@dataclass(frozen=True)
class PackedCase:
    """Sequences for the packed edit: sequence j has counts[j] tokens (its prompt the first
    prompts[j], the rest generated) and adapter adapter_ids[j] (−1: none) among `configs`;
    h of each sequence is drawn once, so the packed and the padded forms see the same rows."""

    counts: tuple[int, ...]
    prompts: tuple[int, ...]
    adapter_ids: tuple[int, ...]
    configs: tuple[ReftConfig, ...]
    d: int
    dtype: np.dtype
    seed: int

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def hs(self) -> list[np.ndarray]:
        """[(counts[j], d)]: each sequence's hidden states ~ N(0, 1)."""
        rng = self.rng(1)
        return [rng.standard_normal((c, self.d)).astype(self.dtype) for c in self.counts]

    def adapters(self) -> list:
        """[(config, {group: {param: array}})], one parameter set per adapter and group."""
        rng = self.rng(3)
        return [(c, {g: FAMILY[c.intervention].init(self.d, c.rank, rng, dtype=self.dtype)
                     for g in c.groups}) for c in self.configs]

    def tokens(self, order=None, chunks=None):
        """(rows, positions, prompt_lengths, adapter_ids) of the flat run: each sequence's
        tokens in `order` (default 0..S−1), sequence j cut at chunks[j] (a sorted list of
        positions) and the pieces of all sequences interleaved round-robin, as an engine's
        chunked prefill schedules them; rows[i] = (sequence, position) of token i."""
        order = range(len(self.counts)) if order is None else order
        pieces = []
        for j in order:
            cuts = [0, *(chunks[j] if chunks else []), self.counts[j]]
            pieces.append([(j, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo])
        rows = [(j, t) for k in range(max(map(len, pieces), default=0))
                for piece in pieces if k < len(piece)
                for j, lo, hi in [piece[k]] for t in range(lo, hi)]
        t = np.array([t for _, t in rows], dtype=np.int64)  # (T,)
        n = np.array([self.prompts[j] for j, _ in rows], dtype=np.int64)  # (T,)
        a = np.array([self.adapter_ids[j] for j, _ in rows], dtype=np.int64)  # (T,)
        return rows, t, n, a


@st.composite
def packed_cases(draw, dtype=None, max_seqs: int = 5, max_tokens: int = 12, max_adapters: int = 3,
                 interventions=("loreft", "direft")) -> PackedCase:
    """1..max_seqs sequences of 1..max_tokens tokens, prompts of 1..all of them, 1..max_adapters
    adapters (any positions, tied or not, either rule, r <= d <= 16) and sequences without one."""
    counts = tuple(draw(st.lists(st.integers(1, max_tokens), min_size=1, max_size=max_seqs)))
    prompts = tuple(draw(st.integers(1, c)) for c in counts)
    r_max, d = draw(rank_dims(16))
    configs = tuple(
        ReftConfig(layers=(0,), rank=draw(st.integers(1, r_max)), positions=draw(position_strings())[0],
                   tied=draw(st.booleans()), intervention=draw(st.sampled_from(interventions)),
                   position_rule=draw(st.sampled_from(("paper", "pyreft"))))
        for _ in range(draw(st.integers(1, max_adapters))))
    ids = tuple(draw(st.integers(-1, len(configs) - 1)) for _ in counts)
    return PackedCase(counts, prompts, ids, configs, d,
                      np.dtype(dtype) if dtype is not None else draw(dtypes), draw(seeds))


# ---------------------------------------------------------------- edge examples

# Always run, in addition to what hypothesis draws: the smallest sizes, full rank,
# the largest hidden size at rank 1 and at full rank, every leading shape, both dtypes.
EDGE_CASES = tuple(
    Case(r=r, d=d, dtype=dt, lead=lead, seed=seed, scale=1.0)
    for (r, d, lead, seed) in (
        (1, 1, (), 0),
        (1, 2, (3,), 1),
        (2, 2, (2, 3), 2),
        (1, MAX_D, (2,), 3),
        (8, MAX_D, (2, 3), 4),
        (MAX_D, MAX_D, (4,), 5),
    )
    for dt in DTYPES
)
EDGE_STIEFEL = tuple(
    StiefelCase(r=r, d=d, dtype=dt, seed=seed)
    for (r, d, seed) in ((1, 1, 0), (1, 2, 1), (3, 3, 2), (1, MAX_D, 3), (MAX_D, MAX_D, 4))
    for dt in DTYPES
)


def with_edges(examples, name: str = "case", dtype=None):
    """Decorator: hypothesis.example(**{name: e}) for every edge example (of `dtype` if given)."""

    def decorate(test):
        for e in examples:
            if dtype is None or e.dtype == np.dtype(dtype):
                test = example(**{name: e})(test)
        return test

    return decorate


# ---------------------------------------------------------------- comparison


def assert_close(got, expected, *, atol, rtol=0.0, what: str = "", case=None) -> None:
    """|got − expected| <= atol + rtol·|expected| elementwise (atol may be an array that
    broadcasts); on failure the message names the case, the worst index, the absolute and
    relative error there, and the tolerance."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != expected {expected.shape}"
    err = np.abs(got - expected)
    tol = np.broadcast_to(atol + rtol * np.abs(expected), err.shape)
    if err.size == 0 or np.all(err <= tol):
        return
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    rel = err[worst] / max(abs(expected[worst]), np.finfo(np.float64).tiny)
    raise AssertionError(
        f"{what} [{case}]: worst index {tuple(int(i) for i in worst)}: got {got[worst]!r}, "
        f"expected {expected[worst]!r}, abs err {err[worst]:.3e}, rel err {rel:.3e}, "
        f"tolerance {tol[worst]:.3e}"
    )


def directional_fd_errors(f, args: dict, grads: dict, dout, name: str, n_dirs: int = 4, seed: int = 0):
    """Relative errors of the VJP of f for argument `name` against central differences.

    For random directions V of args[name]'s shape:
        fd = ⟨dout, (f(x + εV) − f(x − εV)) / 2ε⟩      an = ⟨grads[name], V⟩
        noise = 8 u · Σ|dout| (|f(x + εV)| + |f(x − εV)|) / 2ε     (u = 2⁻⁵³)
        error = max(|fd − an| − noise, 0) / max(|fd|, |an|)        (0 when both are 0)
    Φ is affine in h, W, b (and W1, W2, b) and quadratic in R, and the central difference
    of a quadratic is exact: |fd − an| is rounding alone, bounded by `noise`, ~1e-13·|fd|
    with ε = 1e-2 · rms(x). Subtracting that bound matters only where the derivative is
    exactly 0 (ConsReFT's dh when r = d: Φ(h) = Rᵀb ignores h), where fd is pure rounding
    and a relative error would read 1. Returns [(fd, an, error)] in float64.
    """
    rng = np.random.default_rng([seed, n_dirs])
    x = args[name]
    eps = 1e-2 * max(float(np.sqrt(np.mean(x * x))), 1e-3) if x.size else 1e-2
    out = []
    for _ in range(n_dirs):
        V = rng.standard_normal(x.shape)
        plus = f(**(args | {name: x + eps * V}))
        minus = f(**(args | {name: x - eps * V}))
        fd = float(np.sum(dout * (plus - minus)) / (2 * eps))
        an = float(np.sum(grads[name] * V))
        noise = 8 * 2.0**-53 * float(np.sum(np.abs(dout) * (np.abs(plus) + np.abs(minus)))) / (2 * eps)
        denom = max(abs(fd), abs(an))
        out.append((fd, an, max(abs(fd - an) - noise, 0.0) / denom if denom > 0 else 0.0))
    return out


def jacobian_fd(f, args: dict, name: str, eps: float = 1e-3) -> np.ndarray:
    """Full Jacobian ∂f/∂args[name] by central differences, shape (f.size, x.size), float64."""
    x = args[name]
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        cols.append(((f(**(args | {name: x + e})) - f(**(args | {name: x - e}))) / (2 * eps)).ravel())
    return np.stack(cols, axis=1)


def assert_vjp_is_the_jacobian(spec, r: int, d: int, lead: tuple, rtol: float) -> None:
    """spec.vjp with dout = e_k is row k of the Jacobian, for every k and every argument,
    compared with the full central-difference Jacobian (spec: a module of FAMILY)."""
    rng = np.random.default_rng(r * 100 + d)
    p = spec.init(d, r, rng, dtype=np.float64)
    h = rng.standard_normal((*lead, d))
    args = {"h": h, **p}
    for i, name in enumerate(("h", *spec.PARAMS)):
        J = jacobian_fd(spec.forward, args, name)  # (h.size, x.size)
        rows = []
        for k in range(h.size):
            e = np.zeros(h.size)
            e[k] = 1.0
            rows.append(spec.vjp(h, *(p[n] for n in spec.PARAMS), e.reshape(h.shape))[i].ravel())
        assert_close(np.stack(rows), J, atol=rtol * max(1.0, np.max(np.abs(J))),
                     what=f"Jacobian wrt {name}", case=(r, d, lead))
