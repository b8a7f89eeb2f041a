"""Sensitivity and specificity, one-vs-rest, from confusion matrices and from feature activations.

Convention: a confusion matrix here has **rows = predicted, columns = truth** (the talk's, the
transpose of scikit-learn's ``confusion_matrix``, whose rows are the truth). ``matrix[p, t]`` counts
the items predicted ``p`` whose true class is ``t``.

Algorithm (one-vs-rest, per class ``c`` of an ``n x n`` matrix ``M`` with total ``N``):

1. TP = ``M[c, c]``; FN = column ``c``'s sum - TP (true ``c``, predicted otherwise);
   FP = row ``c``'s sum - TP (predicted ``c``, truly otherwise); TN = N - TP - FN - FP.
2. Sensitivity = TP / (TP + FN); specificity = TN / (TN + FP); NaN where a denominator is 0.

Features against a variable (``feature_vs_variable``, ``features_vs_variable``):

3. "The feature fires" = activation > ``threshold``; the truth = "the variable equals ``v``".
4. For every value ``v`` the binary counts TP, FN, TN, FP follow, and from them step 2.
   Over many features at once the counts are matrix products of the 0/1 firing matrix with the
   one-hot truth, so a layer's 512 features x 40 values is one product.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def binary_rates(tp, fn, tn, fp) -> tuple:
    """(sensitivity, specificity) from binary counts (step 2); arrays broadcast."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fn)), _ratio(tn, np.asarray(tn) + np.asarray(fp))


def confusion_matrix(predicted, truth, labels: list) -> np.ndarray:
    """Counts with rows = predicted, columns = truth, in the order of ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for p, t in zip(predicted, truth, strict=True):
        for value in (p, t):
            if value not in index:
                raise ValueError(f"value {value!r} is not among the labels; choose one of: "
                                 f"{', '.join(map(str, labels))}")
        matrix[index[p], index[t]] += 1
    return matrix


def one_vs_rest(matrix, labels: list | None = None) -> pd.DataFrame:
    """Per class: TP, FN, FP, TN, sensitivity, specificity (steps 1-2); rows = predicted."""
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square; got shape {m.shape}")
    labels = list(range(m.shape[0])) if labels is None else list(labels)
    if len(labels) != m.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {m.shape[0]}-class confusion matrix")
    tp = np.diag(m)
    fn = m.sum(axis=0) - tp  # column = truth
    fp = m.sum(axis=1) - tp  # row = predicted
    tn = m.sum() - tp - fn - fp
    sens, spec = binary_rates(tp, fn, tn, fp)
    return pd.DataFrame({"label": labels, "tp": tp, "fn": fn, "fp": fp, "tn": tn,
                         "sensitivity": sens, "specificity": spec})


def _value_table(fires: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Counts ``[features, values]`` from 0/1 ``fires [N, F]`` and one-hot ``truth [N, V]`` (step 4)."""
    tp = fires.T @ truth
    fn = truth.sum(axis=0)[None, :] - tp
    fp = fires.sum(axis=0)[:, None] - tp
    tn = fires.shape[0] - tp - fn - fp
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn}


def features_vs_variable(feature_acts, variable_values, threshold: float = 0.0,
                         features: list | None = None) -> pd.DataFrame:
    """Sensitivity/specificity of every feature's firing as a predictor of every value (steps 3-4).

    ``feature_acts``: ``[N, F]`` activations; ``variable_values``: ``N`` values (any hashable).
    One row per (feature, value) with the counts, sensitivity, specificity and Youden's
    J = sensitivity + specificity - 1 (0 for a feature unrelated to the value, 1 for a perfect one).
    """
    acts = np.asarray(feature_acts, dtype=np.float64)
    if acts.ndim == 1:
        acts = acts[:, None]
    values = list(variable_values)
    if acts.ndim != 2 or acts.shape[0] != len(values):
        raise ValueError(f"feature activations of shape {acts.shape} do not match {len(values)} variable values")
    distinct = {repr(v): v for v in values}
    keys = sorted(distinct)
    column = {k: i for i, k in enumerate(keys)}
    truth = np.zeros((len(values), len(keys)), dtype=np.int64)
    truth[np.arange(len(values)), [column[repr(v)] for v in values]] = 1
    counts = _value_table((acts > threshold).astype(np.int64), truth)
    sens, spec = binary_rates(counts["tp"], counts["fn"], counts["tn"], counts["fp"])
    n_feat = acts.shape[1]
    names = list(range(n_feat)) if features is None else list(features)
    table = pd.DataFrame({
        "feature": np.repeat(names, len(keys)),
        "value": [distinct[k] for k in keys] * n_feat,
        **{name: c.reshape(-1) for name, c in counts.items()},
        "sensitivity": sens.reshape(-1),
        "specificity": spec.reshape(-1),
    })
    table["youden_j"] = table["sensitivity"] + table["specificity"] - 1.0
    return table


def feature_vs_variable(feature_acts, variable_values, threshold: float = 0.0) -> pd.DataFrame:
    """One feature (``feature_acts [N]``): per value of the variable, its sensitivity and specificity."""
    acts = np.asarray(feature_acts, dtype=np.float64)
    if acts.ndim != 1:
        raise ValueError(f"one feature's activations must be 1-d [N]; got shape {acts.shape}")
    return features_vs_variable(acts, variable_values, threshold).drop(columns="feature")


def best_feature_per_value(table: pd.DataFrame) -> pd.DataFrame:
    """The feature with the largest Youden's J for each value of a ``features_vs_variable`` table."""
    ranked = table.sort_values(["youden_j", "feature"], ascending=[False, True], kind="stable")
    best = ranked.drop_duplicates(subset=["value"], keep="first")
    return best.sort_values("value", key=lambda s: s.map(repr)).reset_index(drop=True)
