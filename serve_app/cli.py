"""The `serve-app` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serve_app.errors import ServeAppError


def _demo_build(args: argparse.Namespace) -> int:
    from serve_app.demo import build_demo_repository
    from serve_app.ranking.train import build_ranker

    metrics = build_demo_repository(args.out, seed=args.seed)
    metrics["ranker"] = build_ranker(args.out, seed=args.seed)
    if args.wide:
        from serve_app.large_models import build_wide_model

        metrics["wide"] = build_wide_model(args.out, seed=args.seed)
    if args.ffn:
        from serve_app.large_models import build_ffn_model

        metrics["ffn"] = str(build_ffn_model(args.out, seed=args.seed))
    print(f"demo repository written to {args.out}")
    print(json.dumps(metrics, indent=1))
    return 0


def _repository_check(args: argparse.Namespace) -> int:
    from serve_app.repository import ModelRepository
    from serve_app.runtime import load_runner

    for version in ModelRepository(args.repository).check(args.model or None):
        load_runner(version.config, version.model_file, version.precision)  # the graph must match config.yaml
        inputs = ", ".join(f"{s.name}:{s.datatype}" for s in version.input_specs)
        print(f"{version.name} v{version.version} ({version.config.platform}) ok: inputs {inputs}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from serve_app.dataset import build_dataset

    summary = build_dataset(args.storage, args.model, args.since, args.out)
    print(json.dumps(summary.as_dict(), indent=1))
    if not summary.labelled_requests:
        print(f"serve-app: no feedback for model '{args.model}' in the window: the label columns are empty")
    if summary.skipped_digests:
        print(f"serve-app: {summary.skipped_digests} requests were logged as digests (log_max_values) and left out")
    print(f"{summary.rows} rows of {summary.requests} requests written to {args.out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from serve_app.simulate import simulate

    run = simulate(
        args.scenario,
        args.url,
        minutes=args.minutes,
        max_requests=args.requests,
        seed=args.seed,
        storage=args.storage,
        champion=args.champion,
        challenger=args.challenger,
        challenger_weight=args.challenger_weight,
        warm_requests=args.warm_requests,
    )
    if args.json:
        print(json.dumps({"scenario": run.scenario, "sent": run.sent, **run.found}, default=str))
    return 0


def _shadow_report(args: argparse.Namespace) -> int:
    from serve_app.config import DEFAULT_DECISION_THRESHOLD
    from serve_app.repository import ModelRepository
    from serve_app.shadow.report import compare, load_logs, render_html

    predictions, feedback = load_logs(args.storage, args.model)
    if predictions.empty:
        print(f"serve-app: no predictions of model '{args.model}' under {args.storage}", file=sys.stderr)
        return 1
    threshold = DEFAULT_DECISION_THRESHOLD
    if Path(args.repository, args.model, "config.yaml").is_file():
        threshold = ModelRepository(args.repository).config(args.model).decision_threshold
    report = compare(predictions, feedback, threshold)
    with open(args.out, "w") as out:
        out.write(render_html(args.model, report, predictions))
    print(json.dumps(report, indent=1))
    print(f"report written to {args.out}")
    return 0


def _drift_fit(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from serve_app.config import DriftSettings, describe_validation_error
    from serve_app.drift import BUNDLE_FOLDER, build_detectors
    from serve_app.errors import InvalidInput
    from serve_app.repository import ModelRepository

    settings: dict = {}
    if args.config:
        applications = yaml.safe_load(Path(args.config).read_text())["applications"]
        app = next((a for a in applications if args.app in (None, a.get("name"))), None)
        if app is None:
            raise InvalidInput(f"{args.config}: no application named '{args.app}'")
        settings = dict(app.get("args", {}).get("drift", {}).get(args.model, {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--set {item!r}: expected KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    try:
        drift = DriftSettings.model_validate(settings)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error, f"drift settings of '{args.model}'")) from None
    repository = ModelRepository(args.repository)
    if args.version:
        versions = [repository.version(args.model, args.version)]
    else:
        versions = repository.served_versions(args.model)
    for version in versions:
        start = time.perf_counter()
        detectors = build_detectors(version, drift)
        detectors.save(version.path / BUNDLE_FOLDER)
        took = time.perf_counter() - start
        print(
            f"{version.name} v{version.version}: {drift.mode} detectors over {detectors.schema.names}, "
            f"configured in {took:.1f} s -> {version.path / BUNDLE_FOLDER}"
        )
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from serve_app.quantize import quantize, render_markdown

    report = quantize(
        args.repository, args.model, args.version, args.to, args.calibration, args.max_accuracy_drop, args.label
    )
    print(render_markdown(report))
    print(f"registered as {args.model} v{report['version']} (report: quantization.json and quantization.md beside it)")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    """The repository index: from a running server (what it serves), or from the folder alone."""
    if args.url:
        import urllib.request

        request = urllib.request.Request(
            f"{args.url.rstrip('/')}/v2/repository/index",
            b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            entries = json.loads(response.read())
    else:
        from serve_app.repository import ModelRepository

        entries = [
            {**e, "state": e["state"] if not e["reason"].startswith("not loaded") else "ON DISK", "reason": ""}
            for e in ModelRepository(args.repository).index(set())
        ]
    print(f"{'MODEL':<24} {'VERSION':<8} {'STATE':<12} REASON")
    for entry in entries:
        print(f"{entry['name']:<24} {entry['version']:<8} {entry['state']:<12} {entry['reason']}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from serve_app.onboarding import register

    print(json.dumps(register(args.repository, args.model, args.onnx, args.preprocessor, args.reference), indent=1))
    return 0


def _export(args: argparse.Namespace) -> int:
    from serve_app.onboarding import export

    result = export(args.repository, args.model, args.torch, args.example, args.tolerance, args.preprocessor)
    print(json.dumps(result, indent=1))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from batch.job import run_from_args

    run_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the demo model repository").add_subparsers(dest="action", required=True)
    build = demo.add_parser(
        "build", help="train the demo models (fraud and ranker, versions 1 and 2; echo; dense) into a repository"
    )
    build.add_argument("--out", default="model_repository", help="repository root to write")
    build.add_argument("--seed", type=int, default=7)
    build.add_argument("--wide", action="store_true", help="also build fraud-wide, a large MLP (quantisation demo)")
    build.add_argument("--ffn", action="store_true", help="also build ffn, a 38M-parameter model (benchmarks)")
    build.set_defaults(run=_demo_build)

    repository = commands.add_parser("repository", help="the model repository").add_subparsers(
        dest="action", required=True
    )
    check = repository.add_parser("check", help="validate configs and artefacts and load each served model")
    check.add_argument("--repository", default="model_repository")
    check.add_argument("--model", action="append", help="model to check (repeatable); default: all")
    check.set_defaults(run=_repository_check)

    shadow = commands.add_parser("shadow-report", help="compare shadow and production on the logged traffic")
    shadow.add_argument("--storage", required=True, help="storage URI of the prediction log")
    shadow.add_argument("--model", required=True)
    shadow.add_argument("--out", default="shadow_report.html")
    shadow.add_argument("--repository", default="model_repository", help="where the model's decision_threshold is")
    shadow.set_defaults(run=_shadow_report)
    dataset = commands.add_parser("dataset", help="a training set: served rows joined with their feedback")
    dataset.add_argument("--model", required=True)
    dataset.add_argument("--since", default="90d", help="a window (90d, 12h, 30m) or an ISO date (default: 90d)")
    dataset.add_argument("--out", required=True, help="the Parquet file to write: a path or any pyarrow.fs URI")
    dataset.add_argument(
        "--storage", default="serve_app_storage", help="the serve config's storage_uri (default: serve_app_storage)"
    )
    dataset.set_defaults(run=_dataset)
    from serve_app.simulate import SCENARIOS

    simulate = commands.add_parser("simulate", help="live a story (shadow, challenger, drift) against a server")
    simulate.add_argument("--scenario", required=True, choices=SCENARIOS)
    simulate.add_argument("--url", default="http://127.0.0.1:8000")
    simulate.add_argument("--minutes", type=float, default=10.0, help="the longest it runs (default: 10)")
    simulate.add_argument("--requests", type=int, default=2_000, help="the most requests it sends (default: 2000)")
    simulate.add_argument("--seed", type=int, default=11)
    simulate.add_argument("--storage", default="serve_app_storage", help="shadow: the server's storage_uri")
    simulate.add_argument("--champion", type=int, default=1, help="shadow, challenger: the version that answers")
    simulate.add_argument("--challenger", type=int, default=2, help="the new version: the shadow, or the challenger")
    simulate.add_argument("--challenger-weight", type=float, default=0.5, help="challenger: its share of users")
    simulate.add_argument("--warm-requests", type=int, default=100, help="drift: requests before the shift")
    simulate.add_argument("--json", action="store_true", help="also print what was found as one JSON line")
    simulate.set_defaults(run=_simulate)
    models = commands.add_parser("models", help="models and versions").add_subparsers(dest="action", required=True)
    listing = models.add_parser("list", help="every version in the repository, and whether a server serves it")
    listing.add_argument("--repository", default="model_repository")
    listing.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8000): ask it instead")
    listing.set_defaults(run=_models_list)

    register = commands.add_parser("register", help="check an ONNX model and add it as the model's next version")
    register.add_argument("--repository", default="model_repository")
    register.add_argument("--model", required=True)
    register.add_argument("--onnx", required=True, help="the model file")
    register.add_argument("--preprocessor", help="preprocessor.json (default: the latest version's)")
    register.add_argument("--reference", help="reference rows, Parquet (default: the latest version's)")
    register.set_defaults(run=_register)

    export = commands.add_parser("export", help="export a PyTorch model to ONNX, check parity, register it")
    export.add_argument("--repository", default="model_repository")
    export.add_argument("--model", required=True)
    export.add_argument("--torch", required=True, help="TorchScript (.pt) or torch.export (.pt2) file")
    export.add_argument("--example", required=True, help="Parquet rows: parity check and reference")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest |ONNX - PyTorch| allowed")
    export.add_argument("--preprocessor", help="preprocessor.json (default: the latest version's)")
    export.set_defaults(run=_export)

    from serve_app.quantize import TARGETS

    quantize = commands.add_parser("quantize", help="an INT8, FP16 or BF16 variant of a version, as a new version")
    quantize.add_argument("--repository", default="model_repository")
    quantize.add_argument("--model", required=True)
    quantize.add_argument("--version", type=int, required=True)
    quantize.add_argument("--to", required=True, choices=TARGETS)
    quantize.add_argument("--calibration", help="int8-static: Parquet rows (default: the version's reference)")
    quantize.add_argument("--max-accuracy-drop", type=float, help="refuse a variant that loses more AUC than this")
    quantize.add_argument("--label", help="label column of <model>/validation.parquet (default: the one 0/1 column)")
    quantize.set_defaults(run=_quantize)

    from batch.job import add_arguments

    batch = commands.add_parser("batch", help="score Parquet offline with the app's graph (Ray Data)")
    add_arguments(batch)
    batch.set_defaults(run=_batch)

    drift = commands.add_parser("drift", help="drift detectors").add_subparsers(dest="action", required=True)
    fit = drift.add_parser(
        "fit", help="configure a version's detectors offline (online ones take minutes) and save them beside it"
    )
    fit.add_argument("--repository", default="model_repository")
    fit.add_argument("--model", required=True)
    fit.add_argument("--version", type=int, help="default: every served version")
    fit.add_argument("--config", help="a Serve config whose application args hold the model's drift settings")
    fit.add_argument("--app", help="the application in --config; default: the first")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a drift setting (repeatable)")
    fit.set_defaults(run=_drift_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ServeAppError as error:
        print(f"serve-app: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
