"""`serve-app simulate`: the seed's stories (shadow, challenger, drift) lived against a running
server by a synthetic population (scenarios.py), over the protocol as clients speak it (server.py)."""

from __future__ import annotations

import time

from serve_app.simulate.scenarios import Run, Simulator
from serve_app.simulate.server import Server

SCENARIOS = ("shadow", "challenger", "drift")


def simulate(
    scenario: str,
    url: str,
    minutes: float = 10.0,
    max_requests: int = 2_000,
    seed: int = 11,
    model: str = "ranker",
    storage: str = "serve_app_storage",
    champion: int = 1,
    challenger: int = 2,
    challenger_weight: float = 0.5,
    warm_requests: int = 100,
) -> Run:
    """Run one scenario until it has its answer, `max_requests` are sent, or `minutes` pass."""
    server = Server(url)
    try:
        simulator = Simulator(server, model, seed, time.monotonic() + 60 * minutes, max_requests)
        simulator.check_served()
        if scenario == "shadow":
            return simulator.shadow(storage, champion, challenger)
        if scenario == "challenger":
            return simulator.challenger(champion, challenger, challenger_weight)
        return simulator.drift(warm_requests)
    finally:
        server.close()
