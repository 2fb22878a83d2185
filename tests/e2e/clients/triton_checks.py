"""Drive a running serve-app with tritonclient, as a Triton user would, and check every answer.

Run in its own process: tritonclient's protobuf modules and serve-app's define the same
`inference.*` messages and cannot share one process. Exits non-zero on the first failed check.

    python triton_checks.py --protocol http|grpc --url HOST:PORT --expected expected.npz
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tritonclient.utils import InferenceServerException

from serve_app.demo import ECHO_DATATYPES, request_columns, synthetic_transactions

FRAUD_ROWS = 12


def fraud_inputs() -> dict[str, np.ndarray]:
    return request_columns(synthetic_transactions(FRAUD_ROWS, seed=41))


def dense_input() -> np.ndarray:
    return np.random.default_rng(43).normal(size=(64, 256)).astype(np.float32)


def echo_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    arrays = {}
    for datatype in ECHO_DATATYPES:
        if datatype == "BYTES":
            arrays[datatype] = np.array([[b"a", "ü€".encode(), b""], [b"xyz", b"1", b"long" * 20]], dtype=object)
        elif datatype == "BOOL":
            arrays[datatype] = rng.random((2, 3)) < 0.5
        else:
            dtype = np.dtype({"FP16": "float16", "FP32": "float32", "FP64": "float64"}.get(datatype, datatype.lower()))
            arrays[datatype] = (
                rng.normal(size=(2, 3)).astype(dtype)
                if dtype.kind == "f"
                else rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 3), dtype=dtype, endpoint=True)
            )
    return arrays


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--expected", required=True, help="npz of answers computed in-process")
    args = parser.parse_args()
    if args.protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(url=args.url)
    expected = np.load(args.expected, allow_pickle=False)
    grpc = args.protocol == "grpc"

    check(client.is_server_live(), "server is live")
    check(client.is_server_ready(), "server is ready")
    check(client.is_model_ready("fraud"), "fraud is ready")
    check(client.is_model_ready("fraud", "1"), "fraud v1 is ready")
    check(not client.is_model_ready("fraud", "9"), "fraud v9 is not ready")
    server = client.get_server_metadata(as_json=True) if grpc else client.get_server_metadata()
    check(server["name"] == "serve-app" and "binary_tensor_data" in server["extensions"], "server metadata")
    metadata = client.get_model_metadata("fraud", as_json=True) if grpc else client.get_model_metadata("fraud")
    names = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    check(metadata["versions"] == ["1", "2"] and names["country"] == "BYTES", "fraud metadata")

    def infer(model, arrays, binary=True, version="", binary_outputs=True, request_id="", **options):
        inputs = []
        for name, array in arrays.items():
            datatype = "BYTES" if array.dtype == object else client_module.np_to_triton_dtype(array.dtype)
            tensor = client_module.InferInput(name, list(array.shape), datatype)
            if grpc:
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=binary or datatype == "FP16")
            inputs.append(tensor)
        outputs = None
        if not grpc and not binary_outputs:
            outputs = [client_module.InferRequestedOutput(o, binary_data=False) for o in options.pop("outputs")]
        return client.infer(model, inputs, model_version=version, outputs=outputs, request_id=request_id, **options)

    columns = fraud_inputs()
    for version in ("", "1", "2"):  # "": the experiment's split picks the version
        for binary in (True,) if grpc else (True, False):
            result = infer("fraud", columns, binary=binary, version=version, request_id=f"req-{version}-{binary}")
            scores = result.as_numpy("fraud_probability")
            response = result.get_response(as_json=True) if grpc else result.get_response()
            answered = response["model_version"]
            check(version in ("", answered), f"fraud v{answered} answered")
            check(response["id"] == f"req-{version}-{binary}", "request id echoed")
            close = np.allclose(scores, expected[f"fraud_v{answered}"], rtol=1e-6, atol=1e-7)
            check(close, f"fraud v{answered} binary={binary} matches the model in-process")
    if not grpc:
        result = infer("fraud", columns, binary=False, binary_outputs=False, outputs=["fraud_probability"])
        answered = result.get_response()["model_version"]
        check(
            np.allclose(result.as_numpy("fraud_probability"), expected[f"fraud_v{answered}"], rtol=1e-6), "JSON output"
        )

    arrays = echo_inputs()
    for binary in (True,) if grpc else (True, False):
        result = infer("echo", {f"INPUT_{d}": a for d, a in arrays.items()}, binary=binary)
        for datatype, array in arrays.items():
            echoed = result.as_numpy(f"OUTPUT_{datatype}")
            same = echoed.dtype == array.dtype and echoed.shape == array.shape
            same = same and (
                echoed.tolist() == array.tolist() if datatype == "BYTES" else echoed.tobytes() == array.tobytes()
            )
            check(same, f"echo {datatype} round-trips exactly (binary={binary})")

    result = infer("dense", {"INPUT": dense_input()})
    check(np.allclose(result.as_numpy("OUTPUT"), expected["dense"], rtol=1e-6, atol=1e-6), "dense 64x256 FP32")

    def refused(call, code_http: str, code_grpc: str, words: str, what: str) -> None:
        try:
            call()
        except InferenceServerException as error:
            expected_code = code_grpc if grpc else code_http
            check(
                expected_code in str(error.status()) and words in error.message(),
                f"{what}: {error.status()} {error.message()}",
            )
            return
        check(False, f"{what}: no error")

    refused(lambda: infer("nope", columns), "404", "NOT_FOUND", "model 'nope'", "unknown model")
    refused(lambda: infer("fraud", columns, version="7"), "404", "NOT_FOUND", "no version '7'", "unknown version")
    wrong = {**columns, "amount": columns["amount"].astype(np.float64)}
    refused(lambda: infer("fraud", wrong), "400", "INVALID_ARGUMENT", "datatype FP64", "wrong datatype")
    short = {**columns, "hour": columns["hour"][:3]}
    refused(lambda: infer("fraud", short), "400", "INVALID_ARGUMENT", "batch size", "mismatched batch")
    check(client.is_server_live(), "still serving after the errors")


if __name__ == "__main__":
    main()
