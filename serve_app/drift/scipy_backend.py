"""Windowed drift tests on NumPy and SciPy alone: the built-in backend of `serve_app.drift`.

The same tests as alibi-detect's TabularDrift and KSDrift as serve_app.drift configures them, so a
deployment can drop alibi-detect (Business Source License) and flag the same windows:

- numeric columns: two-sample Kolmogorov-Smirnov, two-sided, with the asymptotic p-value (alibi-detect
  asks SciPy for method 'asymp'; SciPy's default would be exact for windows this size);
- categorical columns (codes): Chi-squared on the 2 x k table of reference and window counts over the
  k categories seen in either (SciPy's chi2_contingency, with Yates' correction when k is 2);
- p-values and statistics rounded to float32, as alibi-detect stores them.

The corrections across columns (Bonferroni, FDR) are applied by the caller, as for alibi-detect.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np


class WindowTests:
    """Per-column two-sample tests of a window against a reference sample ([rows, columns])."""

    def __init__(self, x_ref: np.ndarray, categorical: Collection[int] = ()):
        if x_ref.ndim != 2 or not len(x_ref):
            raise ValueError(f"the reference must be a non-empty [rows, columns] array, not shape {x_ref.shape}")
        self.x_ref = x_ref
        self.categorical = frozenset(categorical)
        """Columns holding category codes; the others are numeric."""

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p-values, statistics) per column of a window [rows, columns]: KS distance or Chi-squared."""
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.x_ref.shape[1]:
            raise ValueError(f"the window has {x.shape[1]} columns; the reference has {self.x_ref.shape[1]}")
        # Here, not at the top: SciPy's stats take 1.1 s to import, and every router imports this
        # package (its drift feed) though only the drift monitor scores.
        from scipy.stats import chi2_contingency, ks_2samp

        p_values = np.zeros(x.shape[1], dtype=np.float32)
        statistics = np.zeros_like(p_values)
        for j in range(x.shape[1]):
            if j in self.categorical:
                statistics[j], p_values[j], _, _ = chi2_contingency(_counts(self.x_ref[:, j], x[:, j]))
            else:
                statistics[j], p_values[j] = ks_2samp(self.x_ref[:, j], x[:, j], method="asymp")
        return p_values, statistics

    def save(self, path: Path) -> None:
        np.save(path, self.x_ref, allow_pickle=False)

    @classmethod
    def load(cls, path: Path, categorical: Collection[int] = ()) -> WindowTests:
        """A reference that np.save wrote; pickled (object) arrays are refused, never unpickled."""
        x_ref = np.load(path, allow_pickle=False)
        if not isinstance(x_ref, np.ndarray):  # an .npz archive under the .npy name
            x_ref.close()
            raise ValueError(f"{path.name} is not an .npy array")
        if x_ref.dtype.kind != "f":
            raise ValueError(f"{path.name} holds {x_ref.dtype} values, not floats")
        return cls(x_ref, categorical)


def _counts(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The contingency table: reference and window counts of each category seen in either (one seen
    in neither would leave Chi-squared a column of zeros)."""
    categories = np.union1d(reference, window)
    return np.vstack([(reference[:, None] == categories).sum(axis=0), (window[:, None] == categories).sum(axis=0)])
