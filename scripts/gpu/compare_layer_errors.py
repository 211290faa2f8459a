#!/usr/bin/env python3
"""Compares per-linear relative reconstruction errors ||WX - QX||^2 / ||WX||^2 of qtool and of the reference.

  compare_layer_errors.py QTOOL.json REFERENCE.json [--tolerance 0.02]

QTOOL.json: `qtool convert --json` output; REFERENCE.json: gptq_pipeline_reference.py's output (the last line of
each is read; both hold a "relative_errors" object keyed by module name). Prints the linears with the largest
relative difference |qtool - reference| / reference, then one summary line: PASS when every linear is within the
tolerance.
"""
import argparse, json


def last_json(path):
    return json.loads(open(path).read().strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qtool")
    ap.add_argument("reference")
    ap.add_argument("--tolerance", type=float, default=0.02)
    a = ap.parse_args()
    q, r = last_json(a.qtool)["relative_errors"], last_json(a.reference)["relative_errors"]
    if set(q) != set(r):
        print(f"FAIL: different linears: only qtool {sorted(set(q) - set(r))[:5]}, only reference {sorted(set(r) - set(q))[:5]}")
        return 1
    diff = {n: abs(q[n] - r[n]) / r[n] for n in r}
    worst = sorted(diff, key=diff.get, reverse=True)
    print(f"{'linear':45s} {'qtool':>10s} {'reference':>10s} {'rel.diff':>9s}")
    for n in worst[:8]:
        print(f"{n:45s} {q[n]:10.5f} {r[n]:10.5f} {diff[n]:9.4f}")
    within = sum(d <= a.tolerance for d in diff.values())
    mean_ratio = sum(q[n] / r[n] for n in r) / len(r)
    ok = within == len(r)
    print(f"{'PASS' if ok else 'FAIL'}: {within} of {len(r)} linears within {a.tolerance:.0%} of the reference's relative error; "
          f"largest difference {diff[worst[0]]:.4f} ({worst[0]}); mean qtool/reference {mean_ratio:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
