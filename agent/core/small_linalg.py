"""Small dense linear algebra in pure Python, for the multivariate fault rule.

The agent runs without numpy, and the multivariate rule only ever handles a handful of
signals (at most :data:`MAX_DIM`), so a Cholesky factorisation and two triangular solves
on lists are cheap enough (about k³/6 multiplications for k signals) and keep the rule
pure and deterministic. Matrices are lists of rows; only the lower triangle of a
symmetric matrix is read.
"""

from __future__ import annotations

import math

MAX_DIM = 16
"""The largest group of signals the rule accepts (per-sample cost grows as k³)."""


def cholesky(matrix: list[list[float]]) -> list[list[float]] | None:
    """The lower-triangular L with L·Lᵀ = ``matrix``, or None if it is not positive definite."""
    k = len(matrix)
    low = [[0.0] * k for _ in range(k)]
    for i in range(k):
        row_i = low[i]
        for j in range(i + 1):
            row_j = low[j]
            acc = matrix[i][j]
            for m in range(j):
                acc -= row_i[m] * row_j[m]
            if i == j:
                if not (acc > 0.0 and math.isfinite(acc)):
                    return None
                row_i[i] = math.sqrt(acc)
            else:
                row_i[j] = acc / row_j[j]
    return low


def cholesky_solve(low: list[list[float]], rhs: list[float]) -> list[float]:
    """Solve (L·Lᵀ)·x = ``rhs`` given the Cholesky factor L (forward then back substitution)."""
    k = len(low)
    y = [0.0] * k
    for i in range(k):
        row = low[i]
        acc = rhs[i]
        for m in range(i):
            acc -= row[m] * y[m]
        y[i] = acc / row[i]
    x = [0.0] * k
    for i in range(k - 1, -1, -1):
        acc = y[i]
        for m in range(i + 1, k):
            acc -= low[m][i] * x[m]
        x[i] = acc / low[i][i]
    return x


def quadratic_terms(low: list[list[float]], d: list[float]) -> tuple[float, list[float]]:
    """Hotelling's T² = dᵀ·S⁻¹·d and each coordinate's share ``d_i·(S⁻¹·d)_i``.

    The shares sum to T²; a large positive share names a signal whose departure (given
    the others' and the learned correlations) drives the statistic. One can be negative
    when a signal's departure partly "explains" another's.
    """
    w = cholesky_solve(low, d)
    terms = [di * wi for di, wi in zip(d, w, strict=True)]
    return math.fsum(terms), terms
