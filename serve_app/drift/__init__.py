"""Drift monitoring: the inputs a model sees against its reference sample, and the scores it gives
against the scores it gave that sample. Plain Python (no Ray): the DriftMonitor deployment owns a
`DriftMonitor`, the router's Gateway a `DriftFeed`.

- schema.py: `FeatureSchema` turns raw request columns into the numeric matrix the detectors take
  (numeric values as they are, categories as codes with an "other" code for unseen ones), one score
  per row, and the reference sample.
- detectors.py: one version's `Detectors`, built from its reference or loaded from a bundle that
  `serve-app drift fit` wrote beside the version. Two backends (DriftSettings.backend): alibi-detect
  (the optional `drift` extra; its own save format, loaded without unsafe mode and refused when it
  holds pickled objects), or the built-in one of scipy_backend.py (window mode; the reference saved
  as .npy arrays). alibi-detect is imported only when used.
- monitor.py: `DriftMonitor` gathers rows per (model, version) into windows, checks each window,
  keeps the episode state (K drifting windows in a row raise one alert; a clean window clears it),
  and appends every check to the `drift` Parquet table under the storage URI.
- feed.py: `DriftFeed`, the rows a router buffers for the monitor. alerts.py: webhook and command.
"""

from serve_app.drift.alerts import deliver_alert
from serve_app.drift.detectors import BUNDLE_FOLDER, Detectors, build_detectors, detectors_for
from serve_app.drift.feed import DriftFeed
from serve_app.drift.monitor import DriftMonitor, drift_history
from serve_app.drift.schema import FeatureSchema, feature_schema, load_reference

__all__ = [
    "BUNDLE_FOLDER",
    "Detectors",
    "DriftFeed",
    "DriftMonitor",
    "FeatureSchema",
    "build_detectors",
    "deliver_alert",
    "detectors_for",
    "drift_history",
    "feature_schema",
    "load_reference",
]
