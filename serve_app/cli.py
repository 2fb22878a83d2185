"""The `serve-app` command."""

from __future__ import annotations

import argparse
import json
import sys

from serve_app.errors import ServeAppError


def _demo_build(args: argparse.Namespace) -> int:
    from serve_app.demo import build_demo_repository

    metrics = build_demo_repository(args.out, seed=args.seed)
    print(f"demo repository written to {args.out}")
    print(json.dumps(metrics, indent=1))
    return 0


def _repository_check(args: argparse.Namespace) -> int:
    from serve_app.repository import ModelRepository
    from serve_app.runtime import load_runner

    for version in ModelRepository(args.repository).check(args.model or None):
        load_runner(version.config, version.model_file)  # the graph must match config.yaml
        inputs = ", ".join(f"{s.name}:{s.datatype}" for s in version.input_specs)
        print(f"{version.name} v{version.version} ({version.config.platform}) ok: inputs {inputs}")
    return 0


def _shadow_report(args: argparse.Namespace) -> int:
    from serve_app.shadow_report import compare, load_logs, render_html

    predictions, feedback = load_logs(args.storage, args.model)
    if predictions.empty:
        print(f"serve-app: no predictions of model '{args.model}' under {args.storage}", file=sys.stderr)
        return 1
    report = compare(predictions, feedback)
    with open(args.out, "w") as out:
        out.write(render_html(args.model, report, predictions))
    print(json.dumps(report, indent=1))
    print(f"report written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the demo model repository").add_subparsers(dest="action", required=True)
    build = demo.add_parser("build", help="train the demo fraud model (versions 1 and 2) into a repository")
    build.add_argument("--out", default="model_repository", help="repository root to write")
    build.add_argument("--seed", type=int, default=7)
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
    shadow.set_defaults(run=_shadow_report)
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
