"""Which prompt tokens are edited: parse_positions("f7+l7") and intervention_positions(n, p, s)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import position_strings

from minireft.positions import intervention_positions, parse_positions

# ---------------------------------------------------------------- parse_positions


@pytest.mark.parametrize("text, expected", [
    ("f7+l7", (7, 7)),
    ("f1", (1, 0)),
    ("l3", (0, 3)),
    ("f0+l1", (0, 1)),
    ("f1+l0", (1, 0)),
    ("f12+l100", (12, 100)),
])
def test_parse_accepts(text, expected):
    assert parse_positions(text) == expected


@given(spec=position_strings())
def test_parse_round_trips_every_valid_string(spec):
    text, p, s = spec
    assert parse_positions(text) == (p, s)


REJECTED = [
    "f-1+l2",  # negative count
    "x3",  # unknown letter
    "f1+f2",  # two prefixes
    "l1+l2",  # two suffixes
    "l3+f1",  # suffix before prefix
    "",  # nothing
    "+",  # a bare join
    "f1+",  # a join with nothing after it
    "+l1",  # a join with nothing before it
    "f7l7",  # two parts without the join
    "f",  # a letter without a count
    "F7+L7",  # upper case
    "f1.5",  # not an integer
    "f٣",  # not an ASCII digit (int() would accept it)
    "first7",  # a word
]


@pytest.mark.parametrize("text", REJECTED)
def test_parse_rejects_with_a_message_that_says_what_is_accepted(text):
    with pytest.raises(ValueError, match=r"is malformed; accepted: 'f<p>\+l<s>', 'f<p>' or 'l<s>'"):
        parse_positions(text)


@pytest.mark.parametrize("text", ["f0", "l0", "f0+l0"])
def test_parse_rejects_strings_that_edit_nothing(text):
    with pytest.raises(ValueError, match=r"edits no token; at least one of p, s must be >= 1"):
        parse_positions(text)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match=r"positions must be a string such as 'f7\+l7', got int"):
        parse_positions(7)


# ---------------------------------------------------------------- intervention_positions


def expected_counts(n: int, p: int, s: int) -> tuple[int, int]:
    """The rule, written separately from the code: all of p and s when they fit, else
    p' = min(p, ⌊n/2⌋) and s' = min(s, ⌈n/2⌉)."""
    if n >= p + s:
        return p, s
    return min(p, n // 2), min(s, math.ceil(n / 2))


@pytest.mark.parametrize("n", range(1, 41))
def test_intervention_positions_for_every_short_prompt(n):
    for p in range(11):
        for s in range(11):
            prefix, suffix = intervention_positions(n, p, s)
            pc, sc = expected_counts(n, p, s)
            where = f"n={n}, p={p}, s={s}: prefix {prefix}, suffix {suffix}"
            assert (len(prefix), len(suffix)) == (pc, sc), f"{where}: counts should be {(pc, sc)}"
            assert prefix == list(range(pc)), where
            assert suffix == list(range(n - sc, n)), where
            for positions in (prefix, suffix):
                assert positions == sorted(set(positions)), f"{where}: not sorted or repeated"
                assert all(0 <= i < n for i in positions), f"{where}: outside [0, {n})"
            assert not set(prefix) & set(suffix), f"{where}: overlap"
            assert all(type(i) is int for i in prefix + suffix), where


@pytest.mark.parametrize("n, p, s, expected", [
    (3, 7, 7, ([0], [1, 2])),  # short prompt: ⌊3/2⌋ = 1 prefix, ⌈3/2⌉ = 2 suffix
    (1, 7, 7, ([], [0])),  # one token: it belongs to the suffix
    (2, 7, 7, ([0], [1])),
    (14, 7, 7, (list(range(7)), list(range(7, 14)))),  # exactly fits
    (20, 7, 7, (list(range(7)), list(range(13, 20)))),
    (5, 0, 3, ([], [2, 3, 4])),  # fits: no truncation
    (5, 0, 9, ([], [2, 3, 4])),  # does not fit: s' = min(9, ⌈5/2⌉) = 3
    (5, 9, 0, ([0, 1], [])),  # p' = min(9, ⌊5/2⌋) = 2
    (10, 2, 7, ([0, 1], list(range(3, 10)))),  # fits, though s > n/2
])
def test_worked_examples(n, p, s, expected):
    assert intervention_positions(n, p, s) == expected


@pytest.mark.parametrize("args, match", [
    ((0, 7, 7), r"n must be >= 1: the prompt is empty"),
    ((-1, 1, 1), r"n must be a non-negative integer, got -1"),
    ((5, -1, 1), r"prefix must be a non-negative integer, got -1"),
    ((5, 1, 1.0), r"suffix must be a non-negative integer, got 1.0"),
    ((True, 1, 1), r"n must be a non-negative integer, got True"),
])
def test_intervention_positions_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        intervention_positions(*args)


# ---------------------------------------------------------------- the "pyreft" rule


@given(n=st.integers(1, 60), p=st.integers(0, 12), s=st.integers(0, 12))
def test_pyreft_rule_clamps_both_sides_to_half_the_prompt_always(n, p, s):
    prefix, suffix = intervention_positions(n, p, s, rule="pyreft")
    pc, sc = min(p, n // 2), min(s, n // 2)  # pyreft's first_n, last_n with last_position = n
    assert prefix == list(range(pc)) and suffix == list(range(n - sc, n))
    assert not set(prefix) & set(suffix)
    # It never edits a token the paper's rule leaves alone: both sets are a head and a tail,
    # and the paper's counts are never smaller.
    paper_prefix, paper_suffix = intervention_positions(n, p, s)
    assert set(prefix) <= set(paper_prefix) and set(suffix) <= set(paper_suffix)
    # When neither side is clamped by pyreft, the prompt fits p + s and the two agree.
    if p <= n // 2 and s <= n // 2:
        assert (prefix, suffix) == (paper_prefix, paper_suffix)


@pytest.mark.parametrize("n, p, s, paper, pyreft", [
    (3, 7, 7, ([0], [1, 2]), ([0], [2])),  # short: pyreft's suffix is ⌊3/2⌋ = 1, not ⌈3/2⌉
    (1, 7, 7, ([], [0]), ([], [])),  # one token: pyreft edits nothing
    (10, 2, 7, ([0, 1], list(range(3, 10))), ([0, 1], list(range(5, 10)))),  # fits, s > n/2
    (5, 0, 3, ([], [2, 3, 4]), ([], [3, 4])),
    (1, 0, 1, ([], [0]), ([], [])),  # "l1" on a one-token prompt
    (2, 1, 1, ([0], [1]), ([0], [1])),  # agree: p, s <= ⌊n/2⌋
    (20, 7, 7, (list(range(7)), list(range(13, 20))), (list(range(7)), list(range(13, 20)))),
])
def test_the_rules_on_worked_examples(n, p, s, paper, pyreft):
    assert intervention_positions(n, p, s, rule="paper") == paper
    assert intervention_positions(n, p, s, rule="pyreft") == pyreft


def test_an_unknown_rule_is_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"rule must be one of \['paper', 'pyreft'\], got 'PyReFT'"):
        intervention_positions(5, 1, 1, rule="PyReFT")
