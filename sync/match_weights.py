"""Fellegi-Sunter weights and the logistic fit of the matcher: GENERATED, do not edit.

Written by `python -m bench.calibrate_matching` (see its docstring for the method)
from seed 424242: 20,000 generated people, 8,000 true pairs for m,
200,000 random pairs for u; WEIGHTS[field][level] starts at log2(m/u) and is
fitted by logistic regression on candidate pairs; a pair's score is the logistic of
SLOPE * (sum of its levels' weights) + INTERCEPT, fitted on candidates from
CALIBRATION_POOL = 10,000 records (the prior of a larger pool is lower).

Fellegi-Sunter log2(m/u) before the fit:
    email: agree 17.43, disagree -3.099
    phone: agree 15.345, disagree -3.563
    address: agree 15.483, street 5.322, area -1.874, disagree -2.765
    birthday: agree 15.494, month_day 8.096, near 0.751, disagree -7.317
    given: exact 7.996, nickname 4.615, typo 6.304, initial 4.615, disagree -7.635
    family: exact 10.097, typo 8.805, disagree -4.272
    middle: exact 4.842, initial 4.842, disagree -4.134
    company: agree 8.896, disagree -5.256

m and u (counts) as measured, for review:
    email: agree 0.883/0.0000, disagree 0.117/1.0000, missing 0.000/0.0000
    phone: agree 0.624/0.0000, disagree 0.055/0.6527, missing 0.321/0.3473
    address: agree 0.687/0.0000, street 0.000/0.0001, area 0.003/0.0183, disagree 0.117/0.7922, missing 0.193/0.1893
    birthday: agree 0.693/0.0000, month_day 0.079/0.0003, near 0.022/0.0131, disagree 0.000/0.7973, missing 0.206/0.1893
    given: exact 0.777/0.0030, nickname 0.044/0.0018, typo 0.100/0.0013, initial 0.048/0.0000, disagree 0.000/0.9939, missing 0.032/0.0000
    family: exact 0.805/0.0007, typo 0.112/0.0002, disagree 0.052/0.9990, missing 0.032/0.0000
    middle: exact 0.212/0.0074, initial 0.000/0.0000, disagree 0.000/0.0878, missing 0.788/0.9048
    company: agree 0.689/0.0014, disagree 0.014/0.5541, missing 0.297/0.4445
"""

WEIGHTS: dict[str, dict[str, float]] = {
    'email': {'agree': 17.486, 'disagree': -3.081, 'missing': 0.0},
    'phone': {'agree': 15.118, 'disagree': -3.457, 'missing': 0.0},
    'address': {'agree': 14.378, 'street': 5.322, 'area': -1.877, 'disagree': -2.485, 'missing': 0.0},
    'birthday': {'agree': 15.378, 'month_day': 8.23, 'near': 0.551, 'disagree': -7.332, 'missing': 0.0},
    'given': {'exact': 8.073, 'nickname': 4.945, 'typo': 6.556, 'initial': 4.945, 'disagree': -9.005, 'missing': 0.0},
    'family': {'exact': 10.033, 'typo': 8.662, 'disagree': -4.164, 'missing': 0.0},
    'middle': {'exact': 4.929, 'initial': 4.842, 'disagree': -4.106, 'missing': 0.0},
    'company': {'agree': 8.898, 'disagree': -5.26, 'missing': 0.0},
}
SLOPE = 1.0
INTERCEPT = -15.4007
CALIBRATION_POOL = 10000
