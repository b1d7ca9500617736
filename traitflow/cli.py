"""`traitflow` command: validate, schema, run, report, export, monitor, sync, serve, view.

User mistakes print one line each (no traceback) and exit 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from traitflow.errors import SpecErrors, TraitflowError

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    """Keep the terminal for traitflow's own progress: no beta warnings or download bars."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", message=r".*(beta|preview)", category=Warning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\b.*")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SpecErrors as many:
        for error in many.errors:
            print(f"error: {error.format()}", file=sys.stderr)
        print(f"{len(many.errors)} error(s)", file=sys.stderr)
        return EXIT_USER_ERROR
    except TraitflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `traitflow report --json | head`
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="traitflow", description="Trait vectors from YAML specs, through Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--root", type=Path, default=Path(os.environ.get("TRAITFLOW_ROOT", ".")),
                       help="folder holding specs/ and datasets/ (default: TRAITFLOW_ROOT or .)")
        return p

    p = with_root(sub.add_parser("validate", help="check every spec and dataset; print a summary"))
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("schema", help="write JSON Schemas of the spec kinds (for editor completion)")
    p.add_argument("--out", type=Path, default=Path("specs/schemas"))
    p.set_defaults(handler=cmd_schema)

    p = with_root(sub.add_parser("run", help="materialize an experiment's assets for all their partitions"))
    p.add_argument("experiment")
    p.add_argument("--stages", default="all",
                   help="comma list of stages (extraction, inference) or asset names (responses, vectors, …); default all")
    p.add_argument("--traits", default="*", help="glob over the experiment's traits (default: all)")
    p.add_argument("--storage", default=None, help="override the experiment's storage.uri")
    p.add_argument("--force", action="store_true",
                   help="materialize every selected partition, even those that are up to date")
    p.set_defaults(handler=cmd_run)

    p = with_root(sub.add_parser("report", help="best vectors and what is materialized"))
    p.add_argument("experiment")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--html", type=Path, default=None, metavar="OUT",
                   help="write every view but Live chat to one self-contained HTML file (or OUT/<experiment>-report.html)")
    p.add_argument("--storage", default=None, help="override the experiment's storage.uri")
    p.set_defaults(handler=cmd_report)

    p = with_root(sub.add_parser("export", help="export trait vectors to other tools (llama.cpp control vectors)"))
    p.add_argument("format", choices=["gguf"], help="gguf: a llama.cpp control vector")
    p.add_argument("experiment")
    p.add_argument("--trait", required=True, help="trait, e.g. toy/optimism")
    p.add_argument("--variant", default=None, help="default: the experiment's extraction variant")
    p.add_argument("--position", default=None, help="default: the first extraction position")
    p.add_argument("--method", default=None, help="default: the best method at that position (extraction_eval)")
    p.add_argument("--layers", default=None, help="layer DSL, e.g. 3 or 2-4 or best (direction.N = layer N); default: every extracted layer but 0")
    p.add_argument("--coefficient", type=float, default=1.0, help="multiplies the unit vectors (activation units)")
    p.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: the model's model_type)")
    p.add_argument("--out", type=Path, default=None, help="default: <trait>-<variant>-<method>.gguf in the current folder")
    p.add_argument("--storage", default=None, help="override the experiment's storage.uri")
    p.set_defaults(handler=cmd_export)

    p = with_root(sub.add_parser("monitor", help="generate live, each token coloured by trait projections"))
    p.add_argument("experiment")
    p.add_argument("variant")
    p.add_argument("prompt")
    p.add_argument("--traits", default="*", help="glob over the experiment's traits (default: all; the first colours)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threshold", type=float, default=None, help="flag tokens whose |score| exceeds this")
    p.add_argument("--steer", action="append", default=[], metavar="TRAIT:COEF",
                   help="steer with the trait's best vector, e.g. toy/optimism:-80 (repeatable)")
    p.add_argument("--storage", default=None, help="override the experiment's storage.uri")
    p.set_defaults(handler=cmd_monitor)

    p = with_root(sub.add_parser("sync", help="copy an experiment's artifacts between the local store and a bucket"))
    p.add_argument("direction", choices=["push", "pull"], help="push: local -> bucket; pull: bucket -> local")
    p.add_argument("experiment")
    p.add_argument("--remote", default=os.environ.get("TRAITFLOW_REMOTE"),
                   help="s3://bucket/prefix (default: TRAITFLOW_REMOTE); endpoint and credentials from the environment")
    p.add_argument("--full", action="store_true", help="also delete what the other side no longer has")
    p.add_argument("--dry-run", action="store_true", help="print what would move; move nothing")
    p.add_argument("--include-activations", action="store_true", help="also the raw activations (large)")
    p.add_argument("--jobs", type=int, default=8, help="parallel transfers (default 8)")
    p.add_argument("--checksums", choices=["when_supported", "when_required"], default="when_supported",
                   help="when_required: for S3 APIs that reject boto3's default CRC checksums (older R2)")
    p.add_argument("--storage", default=None, help="the local side (default: the experiment's storage.uri)")
    p.add_argument("--no-record", action="store_true",
                   help="pull: do not record the pulled artifacts as materializations in this machine's Dagster instance")
    p.set_defaults(handler=cmd_sync)

    p = with_root(sub.add_parser("serve", help="keep model variants loaded; stages and `dagster asset materialize` use them"))
    p.add_argument("--variants", required=True,
                   help="comma list of model spec names or experiment variant names, e.g. chat,pessimist")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    p.add_argument("--max-queue", type=int, default=8, help="model tasks that may wait their turn; one more is refused (busy)")
    p.set_defaults(handler=cmd_serve)

    p = with_root(sub.add_parser("view", help="research views in the browser: text, tokens, charts; Live chat via serve"))
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default 8766; 0 picks a free one)")
    p.add_argument("--storage", default=None, help="override every experiment's storage.uri")
    p.set_defaults(handler=cmd_view)
    return parser


# --------------------------------------------------------------------------- commands
def load_for(args: argparse.Namespace):
    """The project with just the named experiment (and the ones it takes vectors from); warnings go
    to stderr, and an experiment with errors stops here with each of them."""
    from traitflow.specs.loader import load_project

    project = load_project(args.root, experiments=[args.experiment], strict=False)
    project.require(args.experiment)
    for warning in project.warnings:
        print(f"warning: {warning.format()}", file=sys.stderr)
    return project


def cmd_validate(args: argparse.Namespace) -> int:
    from traitflow.specs.loader import load_project

    project = load_project(args.root, strict=False)
    for warning in project.warnings:
        print(f"warning: {warning.format()}", file=sys.stderr)
    if project.errors:
        raise SpecErrors(project.errors)
    print(f"project {args.root.resolve()}")
    print(f"  model specs: {', '.join(sorted(project.models)) or 'none'}")
    for exp in project.experiments.values():
        print(f"experiment {exp.name} ({exp.path.relative_to(args.root)})")
        for name, spec in exp.variants.items():
            extra = f" + lora {spec.lora}" if spec.lora else ""
            print(f"  variant {name}: {spec.model}{extra}")
        for trait in exp.traits:
            data = project.traits[trait]
            questions = len(data.steering.questions) if data.steering else 0
            print(f"  trait {trait}: {len(data.positive)} positive / {len(data.negative)} negative scenarios"
                  f"{' (paired)' if data.paired else ''}, {questions} steering questions"
                  f"{' (with adversarial prefix)' if data.steering and data.steering.adversarial_prefix else ''}")
        for name in exp.prompt_sets:
            print(f"  prompt set {name}: {len(project.prompt_sets[name].prompts)} prompts")
    print(f"ok: {len(project.experiments)} experiment(s), {len(project.traits)} trait(s), "
          f"{len(project.prompt_sets)} prompt set(s)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from traitflow.specs.schema import write_schemas

    for path in write_schemas(args.out):
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from assets.runner import run_experiment

    project = load_for(args)
    if args.storage:
        os.environ["TRAITFLOW_STORAGE"] = args.storage
    # Weight-loading bars: traitflow prints its own progress (transformers is imported only if a model loads).
    os.environ["TRAITFLOW_QUIET_LOADING"] = "1"
    summary = run_experiment(project, args.experiment, stages=args.stages.split(","), trait_glob=args.traits,
                             force=args.force)
    print(summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from traitflow.report import build_report, format_report

    project = load_for(args)
    storage = args.storage or os.environ.get("TRAITFLOW_STORAGE")
    if args.html is not None:
        from traitflow.stages.context import ReadContext
        from traitflow.view.report import write_html_report

        path = write_html_report(ReadContext.create(project, args.experiment, storage_uri=storage), args.html)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; opens offline in a browser)")
        return 0
    report = build_report(project, args.experiment, storage_uri=storage)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from traitflow.export import export_experiment_gguf

    project = load_for(args)
    result = export_experiment_gguf(
        project, args.experiment, args.trait, variant=args.variant, position=args.position, method=args.method,
        layers=args.layers, coefficient=args.coefficient, out=args.out, model_hint=args.model_hint,
        storage_uri=args.storage or os.environ.get("TRAITFLOW_STORAGE"))
    print(f"wrote {result.path}: {result.trait} ({result.variant}) {result.position} {result.method}, "
          f"layers {','.join(map(str, result.layers))}, coefficient {args.coefficient:g}")
    if result.best_layer is not None:
        print(f"best layer by extraction_eval: {result.best_layer} "
              f"(llama.cpp: --control-vector-layer-range {result.best_layer} {result.best_layer})")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from traitflow.monitor.live import run_monitor

    run_monitor(args.root, args.experiment, args.variant, args.prompt, traits=args.traits, system=args.system,
                max_new_tokens=args.max_new_tokens, threshold=args.threshold, steer=args.steer,
                storage_uri=args.storage or os.environ.get("TRAITFLOW_STORAGE"))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from traitflow.sync import local_store_root, sync

    if not args.remote:
        raise TraitflowError("sync needs --remote s3://bucket/prefix (or TRAITFLOW_REMOTE)")
    project = load_for(args)
    local = local_store_root(project, args.experiment, args.storage or os.environ.get("TRAITFLOW_STORAGE"))
    result = sync(args.direction, local, args.experiment, args.remote, full=args.full, dry_run=args.dry_run,
                  include_activations=args.include_activations, jobs=args.jobs, checksums=args.checksums, out=sys.stdout)
    if args.direction == "pull" and not args.dry_run and not args.no_record:
        from assets.records import record_pulled
        from assets.runner import open_instance
        from traitflow.store import ArtifactStore

        instance = open_instance(local)
        recorded = record_pulled(project, args.experiment, instance, ArtifactStore(local),
                                 result.local | {p for p in result.in_bucket if not p.startswith(".")}, args.remote)
        print(f"recorded {recorded} materialization(s) of {args.experiment} in the Dagster instance at {instance.root_directory}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from traitflow.server.service import serve
    from traitflow.server.wire import DEFAULT_PORT

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if not names:
        raise TraitflowError("--variants: name at least one variant, e.g. --variants chat,pessimist")
    if args.max_queue < 0:
        raise TraitflowError(f"--max-queue must be 0 or more, got {args.max_queue}")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise TraitflowError(f"--port must be between 0 and 65535, got {port}")
    os.environ["TRAITFLOW_QUIET_LOADING"] = "1"
    serve(args.root, names, port, max_queue=args.max_queue, log=lambda line: print(line, flush=True))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from traitflow.view.app import view
    from traitflow.view.urls import DEFAULT_PORT

    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise TraitflowError(f"--port must be between 0 and 65535, got {port}")
    view(args.root, port, storage_uri=args.storage or os.environ.get("TRAITFLOW_STORAGE"),
         log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
