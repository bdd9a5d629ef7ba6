"""Fellegi-Sunter weights and the logistic fit of the matcher: GENERATED, do not edit.

Written by `python -m bench.calibrate_matching` (see its docstring for the method)
from seed 424242: 20,000 generated people, 8,000 true pairs for m,
200,000 random pairs for u; WEIGHTS[field][level] starts at log2(m/u) and is
fitted by logistic regression on candidate pairs; a pair's score is the logistic of
SLOPE * (sum of its levels' weights) + INTERCEPT, fitted on candidates from
CALIBRATION_POOL = 10,000 records (the prior of a larger pool is lower).

Fellegi-Sunter log2(m/u) before the fit:
    email: agree 17.436, disagree -3.141
    phone: agree 16.95, disagree -3.507
    address: agree 17.071, street 4.966, area -1.896, disagree -2.815
    birthday: agree 17.085, month_day 8.332, near 0.699, disagree -7.323
    given: exact 6.351, nickname 3.918, typo 4.973, initial 3.918, disagree -7.62
    family: exact 6.471, typo 6.471, disagree -4.345
    middle: exact 4.796, initial 4.796, disagree -4.067
    company: agree 8.918, disagree -5.346

m and u (counts) as measured, for review:
    email: agree 0.887/0.0000, disagree 0.113/1.0000, missing 0.000/0.0000
    phone: agree 0.633/0.0000, disagree 0.058/0.6551, missing 0.309/0.3449
    address: agree 0.689/0.0000, street 0.000/0.0002, area 0.003/0.0186, disagree 0.112/0.7911, missing 0.195/0.1901
    birthday: agree 0.695/0.0000, month_day 0.079/0.0002, near 0.022/0.0135, disagree 0.000/0.8005, missing 0.204/0.1857
    given: exact 0.760/0.0093, nickname 0.064/0.0043, typo 0.098/0.0031, initial 0.048/0.0000, disagree 0.000/0.9833, missing 0.030/0.0000
    family: exact 0.819/0.0092, typo 0.103/0.0008, disagree 0.049/0.9900, missing 0.030/0.0000
    middle: exact 0.214/0.0077, initial 0.000/0.0000, disagree 0.000/0.0838, missing 0.786/0.9085
    company: agree 0.692/0.0014, disagree 0.014/0.5592, missing 0.294/0.4394
"""

WEIGHTS: dict[str, dict[str, float]] = {
    'email': {'agree': 17.528, 'disagree': -3.045, 'missing': 0.0},
    'phone': {'agree': 16.753, 'disagree': -3.466, 'missing': 0.0},
    'address': {'agree': 15.799, 'street': 4.966, 'area': -1.85, 'disagree': -2.652, 'missing': 0.0},
    'birthday': {'agree': 16.697, 'month_day': 8.243, 'near': 0.666, 'disagree': -7.39, 'missing': 0.0},
    'given': {'exact': 6.202, 'nickname': 4.34, 'typo': 5.479, 'initial': 4.29, 'disagree': -8.843, 'missing': 0.0},
    'family': {'exact': 6.686, 'typo': 6.501, 'disagree': -4.662, 'missing': 0.0},
    'middle': {'exact': 4.238, 'initial': 4.238, 'disagree': -4.118, 'missing': 0.0},
    'company': {'agree': 8.79, 'disagree': -5.355, 'missing': 0.0},
}
SLOPE = 1.0
INTERCEPT = -13.7962
CALIBRATION_POOL = 10000
