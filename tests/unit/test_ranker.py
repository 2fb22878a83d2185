"""The demo ranker: trained by the project's code, v2 better than v1 by NDCG@10, and served as a
ranker: one request per query, a score per candidate and the top 10 candidate ids, best first."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import yaml

from serve_app.errors import RepositoryError
from serve_app.protocol.dataplane import DataPlane, LocalEndpoint
from serve_app.protocol.messages import InferenceRequest
from serve_app.ranking import world
from serve_app.repository import ModelRepository
from serve_app.runtime import load_runner
from serve_app.runtime.batching import merge_rows, split_rows


def endpoint_of(repository, version: int) -> LocalEndpoint:
    model = ModelRepository(repository).version(world.MODEL_NAME, version)
    return LocalEndpoint(model, load_runner(model.config, model.model_file))


def test_version_2_ranks_better_than_version_1_by_a_known_margin(demo_repository):
    metrics = json.loads((demo_repository / world.MODEL_NAME / "metrics.json").read_text())
    assert metrics["2"]["ndcg@10"] - metrics["1"]["ndcg@10"] > 0.1
    assert 0.3 < metrics["1"]["ndcg@10"] < metrics["2"]["ndcg@10"] < 0.9


def test_a_request_is_answered_with_a_score_per_candidate_and_the_top_ids(demo_repository):
    catalogue = world.Catalogue.of(world.CATALOGUE_SEED)
    frame = world.requests(1, catalogue, seed=3)
    endpoint = endpoint_of(demo_repository, 2)
    plane = DataPlane([endpoint])
    inputs = world.request_columns(frame)
    answer = asyncio.run(plane.infer(world.MODEL_NAME, None, InferenceRequest(inputs=inputs)))
    scores, top = answer.outputs["score"], answer.outputs["top_k"]
    assert scores.shape == (world.CANDIDATES,) and top.shape == (10,)
    expected = frame["item_id"].to_numpy()[np.argsort(-scores, kind="stable")[:10]]
    assert [t.decode() for t in top] == list(expected)
    # Only the top ids when asked; fewer candidates than k give them all, best first.
    three = {name: column[:3] for name, column in inputs.items()}
    request = InferenceRequest(inputs=three, requested_outputs=["top_k"])
    answer = asyncio.run(plane.infer(world.MODEL_NAME, None, request))
    assert list(answer.outputs) == ["top_k"] and len(answer.outputs["top_k"]) == 3
    outputs = {o["name"]: o for o in endpoint.metadata()["outputs"]}
    assert outputs["top_k"] == {"name": "top_k", "datatype": "BYTES", "shape": [-1]}


def test_the_truth_prefers_the_favourite_category_and_the_shift_weakens_it():
    catalogue = world.Catalogue.of(world.CATALOGUE_SEED)
    frame = world.requests(400, catalogue, seed=1)
    chances = world.click_chance(frame, catalogue)
    favourite = frame["user_favourite"] == frame["item_category"]
    assert chances[favourite].mean() > 2 * chances[~favourite].mean()
    shifted = world.click_chance(frame, catalogue, shifted=True)
    assert (
        shifted[favourite].mean() / shifted[~favourite].mean() < chances[favourite].mean() / chances[~favourite].mean()
    )
    users = world.users(2000, np.random.default_rng(0), shifted=True)
    assert (users["user_platform"] == "app").mean() > 0.5


@pytest.mark.parametrize(
    ("ranking", "message"),
    [
        ({"candidates": "item_colour"}, "'item_colour' is not an input of one value per row"),
        ({"candidates": "item_id", "output": "score"}, "'score' is already an output"),
    ],
)
def test_a_ranking_that_names_no_candidate_column_is_refused(demo_repository, tmp_path, ranking, message):
    shutil.copytree(demo_repository / world.MODEL_NAME, tmp_path / world.MODEL_NAME)
    config_file = tmp_path / world.MODEL_NAME / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**config, "ranking": ranking}))
    with pytest.raises(RepositoryError, match=message):
        ModelRepository(tmp_path).check([world.MODEL_NAME])


def test_a_shadow_batch_of_several_requests_ranks_each_request_alone(demo_repository):
    catalogue = world.Catalogue.of(world.CATALOGUE_SEED)
    requests = [world.request_columns(world.requests(1, catalogue, seed=s)) for s in (4, 5)]
    endpoint = endpoint_of(demo_repository, 1)
    plane = DataPlane([endpoint])
    alone = [asyncio.run(plane.infer(world.MODEL_NAME, None, InferenceRequest(inputs=r))).outputs for r in requests]
    merged, rows = merge_rows(requests)
    answer = asyncio.run(plane.infer(world.MODEL_NAME, None, InferenceRequest(inputs=merged), merged=True))
    assert "top_k" not in answer.outputs  # 40 rows of two users: no one's top 10
    split = [plane.ranked(endpoint, r, o) for r, o in zip(requests, split_rows(answer.outputs, rows))]
    for single, shadow in zip(alone, split):
        assert list(single["top_k"]) == list(shadow["top_k"])
