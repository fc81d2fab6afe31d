#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""Other ways to choose among the candidates a planning run already scored, scored in the truth.

Each patient's result.json keeps every candidate plan's sample risks and, for a plan-writing
policy (vlm), the policy's plans with their log-probabilities. This script chooses again among
exactly those candidates under other rules, without planning again, and scores each rule against
the synthetic cohort's truth (the cohort named in the run's summary.json):

  lowest mean risk           the planner's own rule (ties may differ: the planner breaks them by
                             the policy's ranking, this script by candidate order)
  ties by text               the same, ties to the plan whose text sorts first (the planner's
                             rule before 2026-12-06)
  first plan                 the policy's first choice, no search
  lowest among the 10        the lowest mean risk among the policy's own plans only
  gate z                     leave the first plan only when the paired sample difference to the
                             lowest-risk plan is more than z standard errors
  margin m                   leave the first plan only when the mean risk is lower by more than m
  prior lambda               the lowest mean risk - lambda x log-probability among the policy's plans

It also reports how often the search left the policy's first plan and whether the truth agreed,
and, among the policy's plans a run scored, the per-patient Spearman correlation of predicted
and true risk. Standard library only; it reads the runs and writes nothing.

  python3 tools/analysis/rerank_candidates.py RUN [RUN ...] [--json]
"""
import argparse
import glob
import json
import math
import os
import sys


def canon(plan):
    return '+'.join(sorted(plan.split('+'))) if plan else ''


def f1(a, b):
    a = set(a.split('+')) if a else set()
    b = set(b.split('+')) if b else set()
    if not a and not b:
        return 1.0
    common = len(a & b)
    p = common / len(a) if a else 0.0
    r = common / len(b) if b else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def load(run_dirs):
    """(result, truth of its patient) for every finished patient of the runs."""
    rows = []
    for run in run_dirs:
        with open(os.path.join(run, 'summary.json')) as f:
            cohort = json.load(f)['run']['cohort']
        with open(os.path.join(cohort, 'truth', 'truth.json')) as f:
            truth = json.load(f)['patients']
        for path in sorted(glob.glob(os.path.join(run, 'patients', '*', 'result.json'))):
            with open(path) as f:
                result = json.load(f)
            if result.get('status', 'finished') != 'finished':
                continue
            rows.append((result, truth[result['patient_id']]))
    return rows


def candidates(result):
    return {c['plan']: c for c in result['candidates']}


def policy_plans(result):
    return [p for p in result['proposal'].get('plans', [])]


def lowest(result):
    return min(result['candidates'], key=lambda c: c['risk_mean'])['plan']


def lowest_by_text(result):
    """The planner's rule before 2026-12-06: equal mean risks went to the plan whose text sorts first."""
    return min(result['candidates'], key=lambda c: (c['risk_mean'], c['plan']))['plan']


def first(result):
    return result['proposal']['first_choice']


def lowest_among_policy(result):
    cs = candidates(result)
    scored = [p['plan'] for p in policy_plans(result) if p['plan'] in cs]
    return min(scored, key=lambda p: cs[p]['risk_mean']) if scored else lowest(result)


def first_against_lowest(result):
    """The scored candidates by plan, the policy's first plan and the lowest-risk candidate."""
    return candidates(result), first(result), lowest(result)


def gate(z):
    def rule(result):
        cs, f, best = first_against_lowest(result)
        if f not in cs:
            return best
        a, b = cs[f]['sample_risks'], cs[best]['sample_risks']
        n = min(len(a), len(b))
        if n < 2:
            return best
        d = [x - y for x, y in zip(a, b)]
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        return best if mean > z * sd / math.sqrt(n) else f
    return rule


def margin(m):
    def rule(result):
        cs, f, best = first_against_lowest(result)
        if f not in cs:
            return best
        return best if cs[f]['risk_mean'] - cs[best]['risk_mean'] > m else f
    return rule


def prior(lam):
    def rule(result):
        cs = candidates(result)
        scored = [(cs[p['plan']]['risk_mean'] - lam * p['log_prob'], p['plan'])
                  for p in policy_plans(result) if p['plan'] in cs]
        return min(scored)[1] if scored else lowest(result)
    return rule


def score(rows, rule):
    regret = f = 0.0
    for result, truth in rows:
        risks = {canon(k): v for k, v in truth['plan_risks'].items()}
        chosen = rule(result)
        regret += risks[canon(chosen)] - truth['optimal_risk']
        f += f1(chosen, truth['optimal_plan'])
    return regret / len(rows), f / len(rows)


def ranks(values):
    order = sorted(range(len(values)), key=lambda k: values[k])
    out = [0.0] * len(values)
    for r, k in enumerate(order):
        out[k] = float(r)
    return out


def diagnostics(rows):
    """How often the search left the first plan and with what effect; Spearman among the policy's plans."""
    moved = better = worse = 0
    tie_better = tie_worse = tied_tops = 0
    spearman, best, worst, uniform = [], [], [], []
    for result, truth in rows:
        risks = {canon(k): v for k, v in truth['plan_risks'].items()}
        d = risks[canon(lowest(result))] - risks[canon(lowest_by_text(result))]
        tie_better += d < 0
        tie_worse += d > 0
        top = min(c['risk_mean'] for c in result['candidates'])
        tied_tops += sum(c['risk_mean'] == top for c in result['candidates']) > 1
        f, chosen = first(result), result['chosen']['plan']
        if canon(chosen) != canon(f):
            moved += 1
            d = risks[canon(chosen)] - risks[canon(f)]
            better += d < 0
            worse += d > 0
        cs = candidates(result)
        scored = [p['plan'] for p in policy_plans(result) if p['plan'] in cs]
        if len(scored) >= 2:
            regret = [risks[canon(p)] - truth['optimal_risk'] for p in scored]
            predicted = [cs[p]['risk_mean'] for p in scored]
            best.append(regret[predicted.index(min(predicted))])  # ties: the policy's order
            worst.append(regret[predicted.index(max(predicted))])
            uniform.append(sum(regret) / len(regret))
            a = ranks(predicted)
            b = ranks([risks[canon(p)] for p in scored])
            m = (len(a) - 1) / 2
            den = sum((x - m) ** 2 for x in a)
            spearman.append(sum((x - m) * (y - m) for x, y in zip(a, b)) / den if den else 0.0)
    mean = (lambda v: sum(v) / len(v) if v else None)
    return {'left_first_plan': moved, 'truth_better': better, 'truth_worse': worse,
            'tied_lowest_mean_risk': tied_tops,
            'ties_by_order_better_than_by_text': tie_better,
            'ties_by_order_worse_than_by_text': tie_worse,
            'spearman_among_policy_plans': mean(spearman),
            'patients_with_two_scored_policy_plans': len(spearman),
            'regret_of_predicted_best_policy_plan': mean(best),
            'regret_of_predicted_worst_policy_plan': mean(worst),
            'regret_of_random_policy_plan': mean(uniform)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs', nargs='+', help='run folders (mewm run --out)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
    args = parser.parse_args()
    try:
        rows = load(args.runs)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f'rerank_candidates: cannot read the runs: {e}')
    if not rows:
        sys.exit('rerank_candidates: no finished patients in the runs')
    rules = [('lowest mean risk', lowest), ('lowest mean risk, ties by text', lowest_by_text),
             ('first plan', first)]
    if any(policy_plans(r) for r, _ in rows):
        rules.append(('lowest among the policy plans', lowest_among_policy))
    rules += [(f'gate z={z}', gate(z)) for z in (0.5, 1, 2, 3)]
    rules += [(f'margin {m}', margin(m)) for m in (0.02, 0.05, 0.1)]
    if any(policy_plans(r) for r, _ in rows):
        rules += [(f'prior lambda={lam}', prior(lam)) for lam in (0.01, 0.03, 0.1)]
    scores = {name: score(rows, rule) for name, rule in rules}
    diag = diagnostics(rows)
    if args.json:
        print(json.dumps({'patients': len(rows),
                          'rules': {k: {'regret_mean': v[0], 'f1': v[1]} for k, v in scores.items()},
                          **diag}, indent=2))
        return
    print(f'{len(rows)} patients')
    print(f'{"rule":32s} {"regret":>8s} {"F1":>6s}')
    for name, (regret, f) in scores.items():
        print(f'{name:32s} {regret:8.4f} {f:6.3f}')
    print(f'the search left the first plan for {diag["left_first_plan"]} patients: '
          f'truly better {diag["truth_better"]}, worse {diag["truth_worse"]}')
    print(f'patients whose lowest mean risk is shared by several candidates: '
          f'{diag["tied_lowest_mean_risk"]}')
    print(f'ties broken by candidate order (the policy\'s) against by text: truly better for '
          f'{diag["ties_by_order_better_than_by_text"]} patients, worse for '
          f'{diag["ties_by_order_worse_than_by_text"]}')
    if diag['spearman_among_policy_plans'] is not None:
        print(f'Spearman of predicted and true risk among the policy plans scored: '
              f'{diag["spearman_among_policy_plans"]:+.3f} '
              f'(mean over {diag["patients_with_two_scored_policy_plans"]} patients); '
              f'regret of the one predicted best {diag["regret_of_predicted_best_policy_plan"]:.4f}, '
              f'a random one {diag["regret_of_random_policy_plan"]:.4f}, '
              f'the one predicted worst {diag["regret_of_predicted_worst_policy_plan"]:.4f}')


if __name__ == '__main__':
    main()
