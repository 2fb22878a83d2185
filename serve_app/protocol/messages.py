"""Inference requests and responses as the data plane sees them: numpy, not JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ID_CHARS = 256
"""The longest request id (and feedback label): ids are held until feedback joins them (the router's
log buffer, the experiment store's feedback window), so their size is bounded where they come in."""


@dataclass
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: list[str] | None = None
    """Output names the client asked for; None means all of them."""
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Parameters of each requested output (binary_data, for example)."""


@dataclass
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
