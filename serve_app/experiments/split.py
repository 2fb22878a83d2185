"""The traffic split: a stable hash of a routing key sends each request to the champion or the
challenger (sticky per key) and samples it for shadows. It runs on every request in every router."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serve_app.config import TrafficSettings
from serve_app.experiments.arms import Arm


def unit_interval(key: str, salt: str) -> float:
    """A stable hash of `key` under `salt`, uniform on [0, 1), equal on every process and machine.

    Python's hash() is randomised per process, so it would split one user differently per replica.
    """
    # Length-prefixing the salt keeps (salt, key) pairs from colliding ("ab"+"c" vs "a"+"bc");
    # surrogatepass: a JSON routing key may carry a lone surrogate, which must not become a 500.
    data = f"{len(salt)}:{salt}{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    # Top 53 bits: a double holds them exactly, so the result can never round up to 1.0.
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


@dataclass(frozen=True)
class Assignment:
    arm: Arm
    version: int
    shadows: tuple[int, ...] = ()
    """Shadow versions this request is mirrored to; empty when it was not sampled."""


class TrafficPolicy:
    """Which version answers a routing key, and whether the request is mirrored to the shadows.

    Challenger iff unit_interval(key) < challenger_weight: raising the weight only moves champion
    keys to the challenger (monotone), and a key keeps its arm while the weight holds (sticky).
    """

    def __init__(self, traffic: TrafficSettings, salt: str):
        self.traffic = traffic
        self.salt = salt  # the experiment's secret: clients cannot choose an arm by their routing key
        self._shadow_salt = f"{salt}:shadow"  # independent of the arm split
        self._shadows = tuple(traffic.shadows)

    def assign(self, routing_key: str) -> Assignment:
        traffic = self.traffic
        if traffic.challenger is not None and unit_interval(routing_key, self.salt) < traffic.challenger_weight:
            arm: Arm = "challenger"
            version = traffic.challenger
        else:
            arm, version = "champion", traffic.champion
        mirrored = bool(self._shadows) and unit_interval(routing_key, self._shadow_salt) < traffic.shadow_fraction
        return Assignment(arm=arm, version=version, shadows=self._shadows if mirrored else ())
