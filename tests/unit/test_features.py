from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from serve_app.demo import BOOLEAN, CATEGORICAL, LOG_SCALED, NUMERIC, request_columns, synthetic_transactions
from serve_app.errors import InvalidInput, UnprocessableInput
from serve_app.features import OTHER, Preprocessor


@pytest.fixture(scope="module")
def fitted() -> Preprocessor:
    return Preprocessor.fit(synthetic_transactions(3_000, seed=1), NUMERIC, CATEGORICAL, BOOLEAN, log=LOG_SCALED)


def test_save_load_round_trip_gives_identical_output(fitted, tmp_path):
    columns = request_columns(synthetic_transactions(500, seed=2))
    fitted.save(tmp_path / "preprocessor.json")
    loaded = Preprocessor.load(tmp_path / "preprocessor.json")
    assert loaded.to_dict() == fitted.to_dict()
    np.testing.assert_array_equal(loaded.transform(columns)["features"], fitted.transform(columns)["features"])


def test_online_columns_and_batch_frame_agree(fitted):
    frame = synthetic_transactions(200, seed=3)
    np.testing.assert_array_equal(fitted.transform(request_columns(frame))["features"], fitted.transform_frame(frame))


def test_scaling_is_learned_from_training_data(fitted):
    frame = synthetic_transactions(3_000, seed=1)
    amount = fitted.transform_frame(frame)[:, fitted.feature_names.index("amount")]
    assert abs(amount.mean()) < 1e-3 and abs(amount.std() - 1) < 1e-3


def test_unseen_category_goes_to_other_bucket(fitted):
    columns = request_columns(synthetic_transactions(2, seed=4))
    columns["country"] = np.array([b"ZZ", b"US"], dtype=object)
    out = fitted.transform(columns)["features"]
    names = fitted.feature_names
    assert out[0, names.index(f"country={OTHER}")] == 1.0
    assert out[1, names.index("country=US")] == 1.0
    country_columns = [i for i, n in enumerate(names) if n.startswith("country=")]
    assert out[:, country_columns].sum(axis=1).tolist() == [1.0, 1.0]


def test_schema_lists_raw_inputs(fitted):
    specs = {s.name: (s.datatype, s.dims) for s in fitted.input_specs}
    assert specs["amount"] == ("FP32", [-1])
    assert specs["merchant_category"] == ("BYTES", [-1])
    assert specs["card_present"] == ("BOOL", [-1])
    assert fitted.output_spec.dims == [-1, fitted.width] and len(fitted.feature_names) == fitted.width


def test_nan_is_refused_with_the_row(fitted):
    columns = request_columns(synthetic_transactions(3, seed=5))
    columns["amount"] = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    with pytest.raises(UnprocessableInput, match=r"'amount'.*row 1"):
        fitted.transform(columns)


def test_wrong_kinds_are_refused(fitted):
    columns = request_columns(synthetic_transactions(2, seed=6))
    with pytest.raises(InvalidInput, match="card_present"):
        fitted.transform({**columns, "card_present": np.array([1, 0])})
    with pytest.raises(InvalidInput, match="country"):
        fitted.transform({**columns, "country": np.array([1, 2], dtype=object)})
    with pytest.raises(InvalidInput, match="missing input 'hour'"):
        fitted.transform({k: v for k, v in columns.items() if k != "hour"})


def test_arrow_columns_give_the_same_features_and_their_problems_are_found_row_by_row(fitted):
    frame = synthetic_transactions(300, seed=7)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = fitted.transform({name: table[name] for name in table.column_names})["features"]
    np.testing.assert_array_equal(arrow, fitted.transform_frame(frame))
    assert all(p is None for p in fitted.row_problems(table))
    broken = table.set_column(
        table.column_names.index("amount"), "amount", pa.array([None, float("nan"), *frame["amount"][2:]])
    )
    broken = broken.set_column(
        broken.column_names.index("country"), "country", pa.array([None, None, None, *frame["country"][3:]])
    )
    problems = fitted.row_problems(broken)
    assert problems[:4].tolist() == [
        "'amount' is missing or not a finite number",  # a row's first problem is the one named
        "'amount' is missing or not a finite number",
        "'country' is missing or not a string",
        None,
    ]
    # Text as bytes: UTF-8 is text; a row of other bytes is that row's problem, not its whole batch's.
    as_bytes = [c.encode() for c in frame["country"]]
    binary = table.set_column(table.column_names.index("country"), "country", pa.array(as_bytes, pa.binary()))
    assert all(p is None for p in fitted.row_problems(binary))
    np.testing.assert_array_equal(
        fitted.transform({name: binary[name] for name in binary.column_names})["features"], arrow
    )
    for kind in (pa.binary(), pa.large_binary(), pa.dictionary(pa.int32(), pa.binary())):
        latin = pa.array([b"Espa\xf1a", *as_bytes[1:]], pa.binary()).cast(kind)
        problems = fitted.row_problems(table.set_column(table.column_names.index("country"), "country", latin))
        assert problems[0] == "'country' is missing or not a string" and all(p is None for p in problems[1:])
    as_numbers = table.set_column(table.column_names.index("country"), "country", pa.array(range(300)))
    assert set(fitted.row_problems(as_numbers)) == {"'country' is missing or not a string"}
    with pytest.raises(InvalidInput, match="country"):
        fitted.transform({name: as_numbers[name] for name in as_numbers.column_names})


def test_text_may_come_as_str_or_utf8_bytes_but_not_as_broken_bytes(fitted):
    columns = request_columns(synthetic_transactions(2, seed=8))
    mixed = fitted.transform({**columns, "country": np.array(["US", b"US"], dtype=object)})["features"]
    assert mixed[:, fitted.feature_names.index("country=US")].tolist() == [1.0, 1.0]
    with pytest.raises(InvalidInput, match="'country' must hold UTF-8 strings"):
        fitted.transform({**columns, "country": np.array([b"\xff", b"US"], dtype=object)})
