"""Serving one batch's edit plans to a Hugging Face model: routing rows, not new math.

The spec's edit and its mirror (minireft.torch.edit: EditPlan, the edited (row, column) pairs
of one batch under one config) know one adapter and the batch they were built on. ReftModel
also runs a batch whose rows name different adapters (adapter_names), and generate() repeats
each prompt row for beams and samples. Both only move rows around:

    expand_plan(plan, k)           row b becomes rows b·k .. b·k + k − 1 (generate()'s expansion)
    place_plan(plan, rows, batch)  a sub-batch's plan with its row i renamed rows[i]
    apply_plans(h, work)           several plans on disjoint rows, written with one index_put
    Routing                        one call's {adapter name: its plan over the whole batch}

Every row is edited exactly as it would be alone (positions are per row), which is why the
spec needs none of this.
"""

from __future__ import annotations

import dataclasses

import torch

from minireft.torch.edit import EditPlan


def expand_plan(plan: EditPlan, k: int) -> EditPlan:
    """Each row repeated k times in place, as generate() expands rows for beams and samples:
    pair (b, t) becomes (b·k + j, t) for j < k."""
    pairs = {}
    for group, (rows, cols) in plan.pairs.items():
        copies = torch.arange(k, device=rows.device)  # (k,)
        pairs[group] = ((rows[:, None] * k + copies).reshape(-1), cols.repeat_interleave(k))  # (K_g·k,) each
    return EditPlan(pairs, plan.batch * k, plan.length)


def place_plan(plan: EditPlan, rows: torch.Tensor, batch: int) -> EditPlan:
    """The plan of a sub-batch with its row i renamed rows[i], for a batch of `batch` rows.

    rows: (plan.batch,) distinct row indices < batch, increasing (pairs stay row-major).
    Several adapters on one batch (ReftModel's adapter_names) build one plan per adapter on the
    rows that name it, then place each in the full batch, where the plans edit disjoint rows
    (`apply_plans`). Rows no plan names are left untouched.
    """
    if rows.shape != (plan.batch,):
        raise ValueError(f"rows must hold one index per row of the plan ({plan.batch}), got shape "
                         f"{tuple(rows.shape)}")
    pairs = {group: (rows.to(r.device)[r], c) for group, (r, c) in plan.pairs.items()}
    return EditPlan(pairs, batch, plan.length)


def apply_plans(h: torch.Tensor, work) -> torch.Tensor:
    """H' = H with, for each (plan, phis) of `work`, H[rows_g, cols_g] ← Φ_g(H[rows_g, cols_g])
    (EditPlan.apply per plan) in one index_put into one copy of h (B, L, d).

    The plans must edit disjoint positions: groups of one plan never share a position, and the
    plans of several adapters on one batch hold disjoint rows (place_plan), so each edited entry
    is written exactly once and the result is each plan applied alone.
    """
    parts = [plan.edits(h, phis) for plan, phis in work]
    rows, cols, values = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*parts))
    return h.index_put((rows, cols), values)


@dataclasses.dataclass(frozen=True)
class Routing:
    """One call's edit: {adapter name: its EditPlan over the whole batch}; the plans hold
    disjoint rows (place_plan) and rows that no plan names run untouched."""

    plans: dict
    batch: int

    def expand(self, k: int) -> Routing:
        """Each row repeated k times in place (generate()'s beams and samples), in every plan."""
        return Routing({name: expand_plan(plan, k) for name, plan in self.plans.items()}, self.batch * k)
