"""Winograd F(4, taps) transforms (runtime.backends.wasm.engine.winograd) against the direct sum."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.wasm.engine import winograd


@pytest.mark.parametrize("taps", [2, 3, 4, 5])
@pytest.mark.parametrize(("pad", "rows"), [(0, 13), (2, 9), (1, 4)])
def test_reference_matches_direct_convolution(taps: int, pad: int, rows: int) -> None:
    rng = np.random.default_rng(taps * 10 + pad)
    c, m = 8, 3
    x = rng.standard_normal((rows, c)).astype(np.float32)
    w = rng.standard_normal((m, c, taps)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    padded = np.zeros((rows + 2 * pad, c), np.float64)
    padded[pad : pad + rows] = x
    oh = rows + 2 * pad - taps + 1
    direct = np.stack(
        [np.einsum("jc,mcj->m", padded[p : p + taps], w.astype(np.float64)) for p in range(oh)]
    )
    got = winograd.reference(
        x, winograd.transform_weights(w), bias, taps=taps, pad=pad, out_rows=oh
    )
    np.testing.assert_allclose(got, (direct + bias).T, rtol=1e-5, atol=1e-5)


def test_taps_without_a_transform_are_refused() -> None:
    assert not winograd.eligible(1) and not winograd.eligible(6)
    with pytest.raises(ValueError, match="no Winograd transform"):
        winograd.matrices(6)
