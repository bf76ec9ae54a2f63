"""Verdict benchmark: do the preflight checks FAIL only on bugs, and on every bug?

Runs ``run_preflight`` (the five default checks: init loss, gradient dependency, overfit one batch,
input-independent baseline, shuffle) on

* clean configurations (``tests/verdict_cases.py``): the shipped ``preflight`` configs, model x data x
  3 seeds (MLP on digits, MNIST-1D and the three synthetic sets; CNN on digits and MNIST-1D); the zoo's
  clean references (BatchNorm CNN, token Transformer, regression MLP); the user styles of
  ``tests/test_user_styles.py`` (loaders passed to fit, dict batches, inline loss, lazy datamodule,
  binary/regression/multilabel steps, padded tokens, OneCycleLR with 2 param groups); the Hugging Face
  BERT and ResNet of ``tests/test_third_party_models.py``;
* planted bugs: the zoo's (``tests/zoo.py``) and new ones, each with the check(s) expected to FAIL.

Prints one line per case, then per check the confusion matrix: on clean cases PASS / INCONCLUSIVE /
FAIL (false alarms, target 0); on the bugs it is expected to catch FAIL (caught) / INCONCLUSIVE / PASS
(missed); and its FAILs on bugs it is not named for. Then the totals: false FAILs, bugs caught.
A check that crashes counts as a FAIL (the report says "the check crashed").

Usage: python benchmarks/bench_verdicts.py [--quick] [--only SUBSTRING ...]
(``--quick``: one seed of the shipped configs, a few styles and bugs; about a fifth of the time.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("WANDB_MODE", "disabled")

from verdict_cases import bug_cases, clean_cases

CHECKS = ("init_loss", "gradient_dependency", "overfit_batch", "input_independent_baseline", "shuffle")
QUICK_CLEAN = ("seed0", "zoo/", "style/dict", "style/fit_loaders", "style/one_cycle", "hf/bert")
QUICK_BUGS = ("softmax", "labels_shifted", "view_instead", "time_major", "augmentation", "wrong_class", "nan")


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning_fabric", "lightning_tricks", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(build) -> tuple[dict[str, str], dict[str, str], float]:
    """``({check: PASS | FAIL | INCONCLUSIVE}, {check: message}, seconds)`` of one case."""
    pl.seed_everything(0, verbose=False)
    start = time.perf_counter()
    report = build().preflight()
    status = {r.name: r.status.upper() for r in report.results}
    return status, {r.name: r.message for r in report.results}, time.perf_counter() - start


def short(status: dict[str, str]) -> str:
    return " ".join(f"{name}={status.get(name, '-')[0]}" for name in CHECKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a subset: about a fifth of the cases")
    parser.add_argument("--only", nargs="+", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--verbose", action="store_true", help="print every FAIL/INCONCLUSIVE message")
    args = parser.parse_args()
    quiet()

    def chosen(name: str, quick: tuple[str, ...]) -> bool:
        if args.only is not None:
            return any(s in name for s in args.only)
        return not args.quick or any(s in name for s in quick)

    clean = {k: v for k, v in clean_cases().items() if chosen(k, QUICK_CLEAN)}
    bugs = {k: v for k, v in bug_cases().items() if chosen(k, QUICK_BUGS)}
    matrix = {c: Counter() for c in CHECKS}
    false_fails, missed, seconds = [], [], 0.0

    print(f"# clean configurations ({len(clean)}): P pass, I inconclusive, F FAIL (a false alarm)", flush=True)
    for name, build in clean.items():
        status, messages, took = run(build)
        seconds += took
        for check in CHECKS:
            matrix[check][f"clean {status.get(check, '-')}"] += 1
        fails = [c for c in CHECKS if status.get(c) == "FAIL"]
        if fails:
            false_fails.append((name, fails))
        print(f"  {name:42s} {short(status)}  {took:5.1f} s" + ("  <- FALSE FAIL" if fails else ""), flush=True)
        for check in CHECKS:
            if status.get(check) in ("FAIL", "INCONCLUSIVE") and (args.verbose or status[check] == "FAIL"):
                print(f"      {check} {status[check]}: {messages[check][:400]}")

    print(f"\n# planted bugs ({len(bugs)}): caught when a named check FAILs", flush=True)
    for name, (build, expected) in bugs.items():
        status, messages, took = run(build)
        seconds += took
        caught = [c for c in expected if status.get(c) == "FAIL"]
        for check in CHECKS:
            verdict = status.get(check, "-")
            matrix[check][f"{'bug' if check in expected else 'other bug'} {verdict}"] += 1
        if not caught:
            missed.append(name)
        line = f"  {name:42s} {short(status)}  expected {'/'.join(expected)}: {'caught' if caught else 'MISSED'}"
        print(f"{line}  {took:5.1f} s", flush=True)
        for check in expected:
            if check in messages and (args.verbose or not caught):
                print(f"      {check} {status[check]}: {messages[check][:400]}")

    print("\n# confusion matrix per check")
    print(
        "| check | clean: pass | clean: inconclusive | clean: FAIL (false) | its bugs: FAIL (caught) "
        "| its bugs: inconclusive | its bugs: pass (missed) | FAILs on other bugs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for check in CHECKS:
        m = matrix[check]
        print(
            f"| {check} | {m['clean PASS']} | {m['clean INCONCLUSIVE']} | {m['clean FAIL']} | {m['bug FAIL']} "
            f"| {m['bug INCONCLUSIVE']} | {m['bug PASS']} | {m['other bug FAIL']} |"
        )
    total_inconclusive = sum(matrix[c]["clean INCONCLUSIVE"] for c in CHECKS)
    named = ", ".join(f"{n} ({'/'.join(c)})" for n, c in false_fails)
    print(
        f"\nclean configurations: {len(clean)}, with a false FAIL: {len(false_fails)} (target 0)"
        + (f": {named}" if false_fails else "")
        + f"; inconclusive verdicts: {total_inconclusive}"
    )
    print(
        f"planted bugs: {len(bugs)}, caught by a named check: {len(bugs) - len(missed)} (target all)"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    print(f"time in the checks: {seconds:.0f} s")


if __name__ == "__main__":
    main()
