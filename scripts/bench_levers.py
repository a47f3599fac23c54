"""The paper's levers, one at a time from minireft's defaults, on validation rows.

Each lever is a set of scripts/bench_tasks.py candidate flags (LEVERS). For every task and
seed, `--run` trains LoReFT with the defaults and with each lever through bench_tasks.py
--split val (validation rows carved from the training split: the test rows stay unseen),
each run written to results/bench_tasks/levers_<tasks>/val/<lever>_seed<s>/results.json. The report pairs
each lever with the defaults of the same seed on the same rows: the paired difference with
its 95% bootstrap interval (scripts/paired.py), pooled over seeds by stacking the rows.

    python scripts/bench_levers.py --run --tasks rotten_tomatoes format --seeds 0 1
    python scripts/bench_levers.py                 # the report from what has run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import paired  # noqa: E402

# lever -> bench_tasks.py flags, each one change from the defaults (minireft.hf.recipe.TRAIN;
# ReftConfig: rank 4, f7+l7 untied, the recipe's two blocks, Riemannian Adam on R)
LEVERS = {
    "defaults": [],
    "steps256": ["--min-steps", "256"],          # more passes: 8 epochs of 256 rows, not 2
    "layers_all": ["--layers", "all"],            # every block, as the paper starts
    "tied": ["--tied"],                           # one intervention for prefix and suffix
    "f1l1": ["--positions", "f1+l1"],
    "f3l3": ["--positions", "f3+l3"],
    "rank1": ["--rank", "1"],
    "rank8": ["--rank", "8"],
    "parametrized": ["--r-update", "parametrized"],  # plain Adam, R = orthogonal parametrisation
}
RESULTS = ROOT / "results" / "bench_tasks"


def run(tasks, seeds, levers, threads: int) -> None:
    """Each (seed, lever) as its own bench_tasks.py process, every task of `tasks` in it."""
    for seed in seeds:
        for lever in levers:
            cmd = [sys.executable, str(ROOT / "scripts" / "bench_tasks.py"), "--split", "val", "--methods",
                   "loreft", "--threads", str(threads), "--tasks", *tasks, "--seed", str(seed),
                   "--out", str(RESULTS / ("levers_" + "_".join(tasks))),
                   "--label", f"{lever}_seed{seed}", *LEVERS[lever]]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)


def load(root: Path = RESULTS) -> dict:
    """{(task, lever, seed): row} from every val/<lever>_seed<s>/results.json under root."""
    rows = {}
    for path in sorted(root.glob("**/val/*_seed*/results.json")):
        lever, seed = path.parent.name.rsplit("_seed", 1)
        for r in json.loads(path.read_text()):
            if r.get("hits"):
                rows[(r["task"], lever, int(seed))] = r
    return rows


def report(rows: dict) -> str:
    """Markdown: per task, each lever's accuracy per seed and its pooled paired difference."""
    lines = []
    for task in sorted({t for t, _, _ in rows}):
        seeds = sorted({s for t, lever, s in rows if t == task and lever == "defaults"})
        base = {s: rows[(task, "defaults", s)] for s in seeds}
        lines += ["", f"**{task}** ({base[seeds[0]]['n_test']} validation rows"
                  + (f"; majority label {base[seeds[0]]['majority']:.3f}" if base[seeds[0]].get("majority") else "")
                  + ")", "", "| lever | params | accuracy by seed | − defaults, pooled over seeds [95% CI] | train s |",
                  "|---|---|---|---|---|"]
        for lever in LEVERS:
            mine = [(s, rows[(task, lever, s)]) for s in seeds if (task, lever, s) in rows]
            if not mine:
                continue
            accs = " / ".join(f"{r['accuracy']:.3f}" for _, r in mine)
            versus = "" if lever == "defaults" else paired.describe(
                [h for _, r in mine for h in r["hits"]], [h for s, _ in mine for h in base[s]["hits"]])
            secs = " / ".join(f"{r['seconds']:.0f}" for _, r in mine)
            lines.append(f"| {lever} | {mine[0][1]['params']:,} | {accs} | {versus} | {secs} |")
    return "\n".join(lines).lstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="train the levers first (else: report only)")
    p.add_argument("--tasks", nargs="+", default=["rotten_tomatoes"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.run:
        run(args.tasks, args.seeds, args.levers, args.threads)
    rows = load()
    if not rows:
        print(f"nothing under {RESULTS} yet: --run first")
        return 1
    text = report(rows)
    (RESULTS / "levers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
