"""Winograd (Toom-Cook) minimal filtering for the graph engine's 1-D convolutions.

An r-tap correlation computes ``TILE`` outputs ``y[i] = sum_j d[i + j] g[j]`` from
``alpha = TILE + r - 1`` inputs with ``alpha`` multiplications instead of ``TILE * r``:

    y = AT @ ((G @ g) * (BT @ d))

For a convolution over C input and M output channels the element-wise product becomes
``alpha`` matrix products of ``[tiles x C] @ [C x M]``, so F(4, 5) (Magika's kernel of
5 rows) does 2.5x fewer multiply-adds than the direct convolution. ``G @ g`` is applied
to the weights once, at conversion. The points are 0, +-1, +-2, +-1/2 and infinity, the
usual well-conditioned choice: with at most 8 points the rounding of fp32 stays near
that of the direct sum (measured on Magika: the same scores to 1e-6).

The matrices are derived here in exact rational arithmetic and checked against the
identity they must satisfy, so a wrong derivation fails at conversion, not in the guest.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np

__all__ = ["TILE", "eligible", "matrices", "reference", "transform_weights"]

#: Outputs per tile.
TILE = 4
_POINTS = (
    Fraction(0),
    Fraction(1),
    Fraction(-1),
    Fraction(2),
    Fraction(-2),
    Fraction(1, 2),
    Fraction(-1, 2),
)


def eligible(taps: int) -> bool:
    """Whether a kernel of ``taps`` rows has a transform here (2..5: at most 8 points)."""
    return 2 <= taps and TILE + taps - 2 <= len(_POINTS)


def _poly_from_roots(roots: list[Fraction]) -> list[Fraction]:
    """Coefficients (lowest degree first) of prod(x - root)."""
    poly = [Fraction(1)]
    for root in roots:
        shifted = [Fraction(0), *poly]
        for i in range(len(poly)):
            shifted[i] -= root * poly[i]
        poly = shifted
    return poly


@cache
def matrices(taps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(AT [TILE x alpha], G [alpha x taps], BT [alpha x alpha])`` as float64."""
    if not eligible(taps):
        raise ValueError(f"no Winograd transform for a kernel of {taps} rows")
    alpha = TILE + taps - 1
    pts = list(_POINTS[: alpha - 1])
    zero, one = Fraction(0), Fraction(1)
    at = [[p**i for p in pts] + [one if i == TILE - 1 else zero] for i in range(TILE)]
    g: list[list[Fraction]] = []
    bt: list[list[Fraction]] = []
    for k, pk in enumerate(pts):
        others = [p for i, p in enumerate(pts) if i != k]
        den = Fraction(1)
        for p in others:
            den *= pk - p
        g.append([pk**j / den for j in range(taps)])
        bt.append([*_poly_from_roots(others), zero])
    g.append([one if j == taps - 1 else zero for j in range(taps)])
    bt.append(_poly_from_roots(pts))
    # The identity: sum_k AT[i][k] G[k][j] BT[k][l] == (l == i + j), for every i, j, l.
    for i in range(TILE):
        for j in range(taps):
            for col in range(alpha):
                total = sum((at[i][k] * g[k][j] * bt[k][col] for k in range(alpha)), zero)
                if total != (one if col == i + j else zero):
                    raise AssertionError(f"Winograd F({TILE}, {taps}) derivation is wrong")
    as_float = [np.array([[float(v) for v in row] for row in m]) for m in (at, g, bt)]
    return as_float[0], as_float[1], as_float[2]


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """``[M][C][taps]`` weights -> ``[alpha][C][M]`` float32 (G applied in float64)."""
    _, g, _ = matrices(weight.shape[2])
    return np.einsum("aj,mcj->acm", g, weight.astype(np.float64)).astype(np.float32)


def reference(
    x_hwc: np.ndarray,
    weight_t: np.ndarray,
    bias: np.ndarray | None,
    *,
    taps: int,
    pad: int,
    out_rows: int,
) -> np.ndarray:
    """The guest's ``winograd`` op in numpy: ``x_hwc [H][C]``, transformed weights
    ``[alpha][C][M]``; returns ``[M][out_rows]`` (channels first, as ONNX's Conv)."""
    at, _, bt = matrices(taps)
    alpha = TILE + taps - 1
    h, c = x_hwc.shape
    tiles = -(-out_rows // TILE)
    padded = np.zeros((tiles * TILE + alpha, c), np.float32)
    rows = min(h, len(padded) - pad)
    padded[pad : pad + rows] = x_hwc[:rows]
    d = np.stack([padded[t * TILE : t * TILE + alpha] for t in range(tiles)])  # [T][alpha][C]
    u = np.einsum("al,tlc->atc", bt.astype(np.float32), d)
    v = np.einsum("atc,acm->atm", u, weight_t)
    y = np.einsum("ia,atm->tim", at.astype(np.float32), v).reshape(tiles * TILE, -1)[:out_rows]
    if bias is not None:
        y = y + bias
    return np.ascontiguousarray(y.T, dtype=np.float32)
