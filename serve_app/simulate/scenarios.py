"""The seed's stories lived against a running server, with a synthetic population whose ground
truth is known (serve_app/ranking/world.py).

- shadow: v1 answers, v2 is mirrored; each user says which candidates were relevant to them (a
  draw of the truth over all the candidates, so both versions are judged on the same labels);
  the shadow report's NDCG@10 of both is read from the prediction log.
- challenger: v1 is the champion, v2 the challenger; each user sees the answering version's top
  10 and clicks or not (position bias times the truth), and the click is the reward: the
  experiment's sequential test decides, and promotes on its own.
- drift: a normal population first, then the shifted one (a new app); relevance labels flow as
  feedback. The monitor alerts, its command retrains, and the new version takes traffic.

Each scenario's time scales are the server's config (experiment settings, drift windows): local
configs decide in minutes, production.yaml keeps the real ones.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from serve_app.ranking import world
from serve_app.simulate.server import Server, ServerError, output

POLL_EVERY = 20
"""Requests between two looks at the experiment or the drift monitor."""


@dataclass
class Population:
    """Users who come back (each has a routing key) and the catalogue they browse."""

    catalogue: world.Catalogue
    users: pd.DataFrame
    rng: np.random.Generator
    shifted: bool = False

    @classmethod
    def of(cls, seed: int, count: int = 2_000, shifted: bool = False) -> Population:
        rng = np.random.default_rng(seed)
        people = world.users(count, rng, shifted)
        people["user_id"] = [f"user-{seed}-{shifted:d}-{i}" for i in range(count)]
        return cls(world.Catalogue.of(world.CATALOGUE_SEED), people, rng, shifted)

    def request(self) -> tuple[str, pd.DataFrame]:
        """A user and the candidates to rank for them: one row per candidate."""
        user = self.users.iloc[int(self.rng.integers(len(self.users)))]
        chosen = self.rng.choice(world.ITEMS, world.CANDIDATES, replace=False)
        frame = pd.DataFrame({name: [user[name]] * world.CANDIDATES for name in world.USER_COLUMNS})
        return user["user_id"], frame.assign(**self.catalogue.items(chosen))

    def relevant(self, frame: pd.DataFrame) -> list[int]:
        return world.relevant(world.click_chance(frame, self.catalogue, self.shifted), self.rng)

    def clicked(self, frame: pd.DataFrame, shown: list[str]) -> bool:
        """Whether the user clicks one of the shown items: each position is looked at less (1, 0.63,
        0.5, ...), each looked-at item is clicked with the truth's chance."""
        chances = pd.Series(world.click_chance(frame, self.catalogue, self.shifted), index=frame["item_id"])
        looked = 1.0 / np.log2(np.arange(len(shown)) + 2.0)
        return bool((self.rng.random(len(shown)) < looked * chances[shown].to_numpy()).any())


@dataclass
class Run:
    """What a scenario did and found; `lines` is what a person reads."""

    scenario: str
    sent: int = 0
    found: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


class Simulator:
    def __init__(self, server: Server, model: str, seed: int, deadline: float, max_requests: int):
        self.server, self.model, self.seed = server, model, seed
        self.deadline, self.max_requests = deadline, max_requests

    def check_served(self) -> dict:
        """The model's metadata; a clear error naming the model and how to serve it if it is not."""
        return self.server.ok(
            "GET",
            f"/v2/models/{self.model}",
            missing=f"the server at {self.server.url} serves no model '{self.model}': build it with "
            "`serve-app demo build` (it trains the demo ranker) and serve it, e.g. `make run` "
            "(configs/local.yaml lists it)",
        )

    def experiment(self) -> dict:
        return self.server.ok(
            "GET",
            f"/v2/models/{self.model}/experiment",
            missing=f"model '{self.model}' has no experiment on this server: the scenarios need one (it takes the "
            "feedback); add it under `experiments` in the application's args, as configs/local.yaml does",
        )

    def serves(self, wanted: dict) -> bool:
        """Whether the experiment runs with exactly this traffic, undecided."""
        experiment = self.experiment()
        traffic, challenger = experiment["traffic"], experiment["traffic"]["challenger"] or {}
        current = {
            "champion": traffic["champion"]["version"],
            "challenger": challenger.get("version"),
            "challenger_weight": challenger.get("weight", 0.0),
            "shadows": traffic["shadows"],
            "shadow_fraction": traffic["shadow_fraction"],
        }
        full = {"challenger": None, "challenger_weight": 0.0, "shadows": [], "shadow_fraction": 0.0, **wanted}
        undecided = "running" if full["challenger"] is not None else "no_challenger"
        return experiment["status"] == undecided and current == full

    def set_traffic(self, wanted: dict) -> None:
        """The experiment's traffic as the scenario needs it, set through the management API if it
        differs (a router built before the last change refuses with 409: the call goes again);
        returns once the routers serve it."""
        if self.serves(wanted):
            return
        while True:
            try:
                self.server.manage("PUT", f"/v2/models/{self.model}/experiment/traffic", wanted)
                break
            except ServerError as error:
                if error.status not in (409, 503) or time.monotonic() > self.deadline:
                    raise
                time.sleep(0.5)
        self.wait(lambda: self.serves(wanted), f"the traffic {wanted} to be served")

    def wait(self, condition: Callable[[], bool], what: str, interval_s: float = 0.5) -> None:
        while not condition():
            if time.monotonic() > self.deadline:
                raise ServerError(f"the scenario ran out of time waiting for {what}")
            time.sleep(interval_s)

    def more(self, sent: int) -> bool:
        return sent < self.max_requests and time.monotonic() < self.deadline

    def send(self, population: Population) -> tuple[str, pd.DataFrame, dict]:
        user, frame = population.request()
        request_id = f"sim-{uuid.uuid4().hex}"
        return request_id, frame, self.server.infer(self.model, world.request_columns(frame), request_id, user)

    # -- the stories ---------------------------------------------------------------------

    def shadow(self, storage: str, champion: int, shadow: int) -> Run:
        from serve_app.shadow.report import compare, load_logs

        run = Run("shadow")
        self.set_traffic({"champion": champion, "shadows": [shadow], "shadow_fraction": 1.0})
        population, labelled = Population.of(self.seed), 0
        while self.more(run.sent):
            request_id, frame, _ = self.send(population)
            relevant = population.relevant(frame)
            self.server.feedback(self.model, request_id, label=json.dumps(relevant))
            run.sent += 1
            labelled += bool(relevant)
        run.say(f"sent {run.sent} requests to {self.model} v{champion}, mirrored to v{shadow}; {labelled} labelled")

        def report() -> dict:
            predictions, feedback = load_logs(storage, self.model)
            if predictions.empty:
                return {}
            return compare(predictions, feedback)["shadow_versions"].get(str(shadow), {})

        self.wait(lambda: report().get("ndcg", {}).get("labelled", 0) >= labelled, "the logs to hold every label", 1.0)
        ndcg = report()["ndcg"]
        run.found = {"ndcg": ndcg, "champion": champion, "shadow": shadow}
        run.say(
            f"NDCG@{ndcg['k']} on {ndcg['labelled']} labelled requests: v{shadow} (shadow) {ndcg['shadow']:.3f}, "
            f"v{champion} (production) {ndcg['production']:.3f}, difference {ndcg['delta']:+.3f}"
        )
        run.say(f"the report: serve-app shadow-report --storage {storage} --model {self.model}")
        return run

    def challenger(self, champion: int, challenger: int, weight: float) -> Run:
        run = Run("challenger")
        self.set_traffic({"champion": champion, "challenger": challenger, "challenger_weight": weight})
        population = Population.of(self.seed)
        experiment = self.experiment()
        while self.more(run.sent) and experiment["status"] == "running":
            request_id, frame, answer = self.send(population)
            clicked = population.clicked(frame, [str(i) for i in output(answer, "top_k")])
            self.server.feedback(self.model, request_id, reward=float(clicked))
            run.sent += 1
            if run.sent % POLL_EVERY == 0:
                experiment = self.experiment()
        experiment = self.experiment()
        # Decided: the statistics as they were at the decision (the history's entry), not after it.
        decided = experiment["history"][-1] if experiment["status"] != "running" and experiment["history"] else None
        arms = experiment["arms"] if decided is None else {r: decided[r] for r in ("champion", "challenger")}
        run.found = {
            "status": experiment["status"],
            "decision": experiment["decision"] if decided is None else decided["action"],
            "p_value": experiment["p_value"] if decided is None else decided["p_value"],
            "arms": {role: arm for role, arm in arms.items() if arm},
            "champion_now": experiment["traffic"]["champion"]["version"],
        }
        for role, arm in arms.items():
            ctr = "n/a" if arm["mean"] is None else f"{arm['mean']:.3f}"
            run.say(f"{role} v{arm['version']}: {arm['requests']} requests, {arm['outcomes']} outcomes, CTR {ctr}")
        p_value = "n/a" if experiment["p_value"] is None else f"{experiment['p_value']:.4g}"
        run.say(
            f"after {run.sent} requests: {experiment['status']}, decision {experiment['decision']}, "
            f"always-valid p-value {p_value}; champion now v{run.found['champion_now']}"
        )
        return run

    def drift(self, warm_requests: int) -> Run:
        run = Run("drift")
        unwatched = f"model '{self.model}' has no drift monitor on this server: add it under `drift`"
        if not self.server.ok("GET", f"/v2/models/{self.model}/drift", missing=unwatched).get("versions"):
            raise ServerError(unwatched)
        before = set(self.experiment_versions())
        normal, shifted = Population.of(self.seed), Population.of(self.seed + 1, shifted=True)
        for _ in range(warm_requests):
            self.labelled_request(normal)
            run.sent += 1
        run.say(f"{run.sent} requests of the usual population; now the new app's users arrive")

        def report() -> dict:
            return self.server.ok("GET", f"/v2/models/{self.model}/drift")

        if not self.labelled_until(run, shifted, lambda: bool(report()["alerts"])):
            raise ServerError(f"no drift alert after {run.sent} requests")
        run.say(f"drift alert: {report()['alerts'][-1]['message']}")
        # Unhurried while the hook retrains: the job shares the machine with this client.
        if not self.labelled_until(run, shifted, lambda: bool(set(self.experiment_versions()) - before), 0.1):
            raise ServerError(f"no retrained version started after {run.sent} requests")
        version = max(set(self.experiment_versions()) - before)
        run.say(f"retrained: {self.model} v{version} is registered and started")

        def served() -> int:
            arm = self.experiment()["arms"]["challenger"] or {}
            return arm.get("requests", 0) if arm.get("version") == version else 0

        def windows() -> list[dict]:
            return report()["versions"].get(str(version), {}).get("history", [])

        self.labelled_until(run, shifted, lambda: served() > 0 and bool(windows()), 0.05)
        checked, final = windows(), report()
        clean = sum(not window["is_drift"] for window in checked)
        run.found = {
            "alerts": final["alerts"],
            "new_version": version,
            "new_version_requests": served(),
            "new_version_windows": len(checked),
            "new_version_clean_windows": clean,
            "episode": final["episode"],
            "cleared": final["cleared"],
        }
        run.say(f"v{version} answered {run.found['new_version_requests']} requests so far")
        run.say(f"v{version}'s windows against the population it learnt: {clean} of {len(checked)} clean")
        if final["episode"] is None:
            run.say(f"drift cleared: {final['cleared'][-1]['reason']}")
        else:
            old = ", ".join(f"v{v}" for v in final["episode"]["versions"])
            run.say(
                f"the episode stays open while {old} still drift; it ends when their windows are clean again or "
                f"they are no longer served (v{version} promoted, {old} unloaded). "
                f"`GET /v2/models/{self.model}/drift` shows the windows"
            )
        return run

    def labelled_until(self, run: Run, population: Population, done: Callable[[], bool], pace_s: float = 0.0) -> bool:
        """Labelled requests until done() (asked every POLL_EVERY requests) or the scenario's end."""
        while self.more(run.sent):
            self.labelled_request(population)
            run.sent += 1
            if run.sent % POLL_EVERY == 0:
                try:
                    if done():
                        return True
                except ServerError as error:  # the server is deploying a change: ask again later
                    if error.status != 503:
                        raise
            time.sleep(pace_s)
        return False

    def experiment_versions(self) -> list[int]:
        traffic = self.experiment()["traffic"]
        challenger = [traffic["challenger"]["version"]] if traffic["challenger"] else []
        return [traffic["champion"]["version"], *challenger, *traffic["shadows"]]

    def labelled_request(self, population: Population) -> None:
        """A request and its relevance label; one the server sheds while it deploys a change (503)
        is let go, as a client would."""
        try:
            request_id, frame, _ = self.send(population)
            self.server.feedback(self.model, request_id, label=json.dumps(population.relevant(frame)))
        except ServerError as error:
            if error.status != 503:
                raise
            time.sleep(0.5)
