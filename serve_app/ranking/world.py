"""A synthetic recommendation world whose ground truth is known: users, items, and the chance that
a user clicks an item shown to them.

A request to the ranker is one user with the candidates to rank: one row per candidate, carrying
the user's columns and the item's. The click chance depends on the item (a quality of its own and
its price), on the user's activity, and, most of all, on whether the item's category is the
user's favourite: an interaction a linear model cannot learn and a small MLP can, so version 2
ranks better than version 1 and the margin is known in advance.

`shift` moves the population (what a new mobile app did to engagement in the drift story): users
arrive on a new platform, are more active, and care less for their favourite category.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MODEL_NAME = "ranker"
CATALOGUE_SEED = 7
"""The catalogue is the same wherever the demo is built or simulated."""
PLATFORMS = ["web", "ios", "android"]
PLATFORM_P = [0.5, 0.3, 0.2]
SHIFTED_PLATFORMS = ["web", "ios", "android", "app"]
SHIFTED_PLATFORM_P = [0.15, 0.15, 0.1, 0.6]
CATEGORIES = ["books", "music", "movies", "games", "sports", "garden", "kitchen", "toys"]
ITEMS = 60
CANDIDATES = 20
"""Candidates per request (the demo client's choice; the model takes any number up to max_batch_size)."""
USER_COLUMNS = {"user_platform": "BYTES", "user_favourite": "BYTES", "user_activity": "FP32"}
ITEM_COLUMNS = {"item_id": "BYTES", "item_category": "BYTES", "item_price": "FP32", "item_popularity": "FP32"}
NUMERIC = {"user_activity": "FP32", "item_price": "FP32", "item_popularity": "FP32"}
CATEGORICAL = ["user_platform", "user_favourite", "item_id", "item_category"]
LOG_SCALED = ["user_activity", "item_price"]
LABEL = "clicked"


@dataclass(frozen=True)
class Catalogue:
    """The items: fixed by the seed, the same in training and in traffic."""

    ids: np.ndarray
    categories: np.ndarray
    prices: np.ndarray
    quality: np.ndarray
    """Each item's own appeal (ground truth, not a column: the model learns it from item_id)."""
    popularity: np.ndarray
    """What the catalogue shows of the quality: a noisy, public estimate of it."""

    @classmethod
    def of(cls, seed: int) -> Catalogue:
        rng = np.random.default_rng(seed)
        quality = rng.normal(0.0, 0.6, ITEMS)
        return cls(
            ids=np.array([f"item-{i:03d}" for i in range(ITEMS)]),
            categories=rng.choice(CATEGORIES, ITEMS),
            prices=rng.lognormal(3.0, 0.8, ITEMS).astype(np.float32),
            quality=quality,
            popularity=(1.0 / (1.0 + np.exp(-(quality + rng.normal(0.0, 0.5, ITEMS))))).astype(np.float32),
        )

    def items(self, chosen: np.ndarray) -> dict[str, np.ndarray]:
        """The item columns of the chosen items (indices into the catalogue)."""
        return {
            "item_id": self.ids[chosen],
            "item_category": self.categories[chosen],
            "item_price": self.prices[chosen],
            "item_popularity": self.popularity[chosen],
        }


def click_logit(frame: pd.DataFrame, catalogue: Catalogue, shifted: bool = False) -> np.ndarray:
    """The ground truth: each row's log-odds of a click when the item is shown to the user."""
    index = np.searchsorted(catalogue.ids, frame["item_id"].to_numpy())
    favourite = (frame["user_favourite"].to_numpy() == frame["item_category"].to_numpy()).astype(float)
    activity = np.log1p(frame["user_activity"].to_numpy(np.float64))
    price = np.log(frame["item_price"].to_numpy(np.float64))
    affinity = 1.0 if shifted else 2.2  # the new app's users browse beyond their favourite
    return -2.6 + catalogue.quality[index] + affinity * favourite + 0.3 * activity - 0.35 * (price - 3.0)


def click_chance(frame: pd.DataFrame, catalogue: Catalogue, shifted: bool = False) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-click_logit(frame, catalogue, shifted)))


def users(count: int, rng: np.random.Generator, shifted: bool = False) -> pd.DataFrame:
    platforms, weights = (SHIFTED_PLATFORMS, SHIFTED_PLATFORM_P) if shifted else (PLATFORMS, PLATFORM_P)
    activity = rng.lognormal(1.0 if not shifted else 1.8, 0.6, count).astype(np.float32)
    return pd.DataFrame(
        {
            "user_platform": rng.choice(platforms, count, p=weights),
            "user_favourite": rng.choice(CATEGORIES, count),
            "user_activity": activity,
        }
    )


def requests(count: int, catalogue: Catalogue, seed: int, shifted: bool = False) -> pd.DataFrame:
    """`count` requests of CANDIDATES rows each: a user and the items to rank, with a `request`
    column numbering them."""
    rng = np.random.default_rng(seed)
    people = users(count, rng, shifted)
    chosen = np.stack([rng.choice(ITEMS, CANDIDATES, replace=False) for _ in range(count)]).ravel()
    frame = people.loc[np.repeat(np.arange(count), CANDIDATES)].reset_index(drop=True)
    frame.insert(0, "request", np.repeat(np.arange(count), CANDIDATES))
    return frame.assign(**catalogue.items(chosen))


def request_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A request's inputs as a client sends them: the ranker's columns, text as bytes."""
    columns = {}
    for name, datatype in {**USER_COLUMNS, **ITEM_COLUMNS}.items():
        values = frame[name].to_numpy()
        columns[name] = np.array([str(v).encode() for v in values], dtype=object) if datatype == "BYTES" else values
    return {name: c.astype(np.float32) if c.dtype.kind == "f" else c for name, c in columns.items()}


def one_row_per_request(frame: pd.DataFrame, by: str, seed: int, limit: int | None = None) -> pd.DataFrame:
    """One row of each request (of the first `limit`), drawn at random: a drift reference of
    independent rows, as the drift monitor takes one candidate of each ranked request."""
    rows = frame.groupby(by, sort=False).sample(n=1, random_state=seed)
    return rows.head(limit) if limit is not None else rows


def impressions(count: int, catalogue: Catalogue, seed: int, shifted: bool = False) -> pd.DataFrame:
    """Training data: requests whose every candidate was shown, with a click drawn from the truth."""
    frame = requests(count, catalogue, seed, shifted)
    rng = np.random.default_rng(seed + 1)
    frame[LABEL] = rng.random(len(frame)) < click_chance(frame, catalogue, shifted)
    return frame


def relevant(chances: np.ndarray, rng: np.random.Generator) -> list[int]:
    """What a user would click among a request's candidates if shown all of them: the relevance
    that NDCG@10 is judged by (a draw of the truth, like the clicks a log holds)."""
    return [int(i) for i in np.flatnonzero(rng.random(len(chances)) < chances)]
