"""Which prompt tokens are edited: the "f{p}+l{s}" rule, as the paper or as pyreft reads it.

A prompt of n real tokens with prefix p and suffix s edits
P = {0, …, p'−1} ∪ {n−s', …, n−1}.
  "paper":  p' = p, s' = s when n ≥ p + s; else p' = min(p, ⌊n/2⌋), s' = min(s, ⌈n/2⌉).
  "pyreft": p' = min(p, ⌊n/2⌋), s' = min(s, ⌊n/2⌋) always (pyreft 0.1.0's
            get_intervention_locations with last_position = n, its pad slots dropped).
Either way the two sets never overlap and never leave the prompt.
"""

from __future__ import annotations

import re

_POSITIONS = re.compile(r"^(?:f([0-9]+))?(\+)?(?:l([0-9]+))?$")
_ACCEPTED = "'f<p>+l<s>', 'f<p>' or 'l<s>' with non-negative integers p, s (e.g. 'f7+l7', 'f1', 'l3')"


def parse_positions(positions: str) -> tuple[int, int]:
    """"f7+l7" → (7, 7); "f1" → (1, 0); "l3" → (0, 3). Returns (prefix, suffix)."""
    if not isinstance(positions, str):
        raise TypeError(f"positions must be a string such as 'f7+l7', got {type(positions).__name__}")
    match = _POSITIONS.match(positions.strip())
    prefix_text, plus, suffix_text = match.groups() if match else (None, None, None)
    if (
        match is None
        or (prefix_text is None and suffix_text is None)
        # "+" joins a prefix and a suffix: it is required between the two, and only there.
        or (plus is not None) != (prefix_text is not None and suffix_text is not None)
    ):
        raise ValueError(f"positions={positions!r} is malformed; accepted: {_ACCEPTED}")
    prefix = int(prefix_text or 0)
    suffix = int(suffix_text or 0)
    if prefix + suffix == 0:
        raise ValueError(f"positions={positions!r} edits no token; at least one of p, s must be >= 1")
    return prefix, suffix


RULES = ("paper", "pyreft")


def intervention_positions(n: int, prefix: int, suffix: int,
                           rule: str = "paper") -> tuple[list[int], list[int]]:
    """The 0-based prefix and suffix positions edited in a prompt of n tokens (module docstring;
    rule "paper" or "pyreft").

    Returns (prefix_positions, suffix_positions), each sorted, disjoint, in [0, n).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    for name, value in (("n", n), ("prefix", prefix), ("suffix", suffix)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n == 0:
        raise ValueError("n must be >= 1: the prompt is empty, so there is no token to edit")
    if rule == "pyreft":
        # pyreft clamps both sides to ⌊n/2⌋ whatever n; its rectangular location tensor fills the
        # dropped slots with a pad position that points outside the prompt, so they edit no prompt token.
        prefix, suffix = min(prefix, n // 2), min(suffix, n // 2)
    elif n < prefix + suffix:
        prefix = min(prefix, n // 2)
        suffix = min(suffix, (n + 1) // 2)
    return list(range(prefix)), list(range(n - suffix, n))
