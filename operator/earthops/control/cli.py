"""The `earthops` command line (kubectl-like). Heavy libraries are imported inside the commands that
need them, so `earthops --help`, `get` and `crds` start fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.text import Text

from earthops import __version__
from earthops.api import KINDS, ManifestError, kind_for, load_manifests
from earthops.control.reconcile.rayjob import DEFAULT_RUNTIME_IMAGE
from earthops.core.store import ENV_STORE, Store, StoreError

app = typer.Typer(
    name="earthops",
    help="Machine learning on Earth-observation data, as Kubernetes resources. "
    "Runs the same manifests on a cluster (`earthops operator`) or on this machine (`earthops run -f`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# exit codes
INVALID = 2
UNSUPPORTED = 3

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", envvar=ENV_STORE, help="Store root URI (file:///path or s3://bucket/prefix). "
                 "Default: ~/.local/share/earthops/store."),
]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port of the local model server on "
                                      "127.0.0.1 (a second deployment takes the next one; 0: a free port).")]
PredictOnceOpt = Annotated[bool, typer.Option("--predict-once", help="Send one prediction of a chip from the "
                                              "model's dataset's test split, print it, stop the server and exit.")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: all for get, "
                                                  "'default' for describe).")]


class Output(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


def _error(label: str, message: str) -> None:
    """One error line on stderr: the label in red on a terminal, the message as plain text (never read
    as rich markup: user values and messages may hold square brackets, as in `[-180, 180]`)."""
    err.print(Text.assemble((label, "red"), " ", message), highlight=False)


def _fail(message: str, code: int) -> typer.Exit:
    _error("error:", message)
    return typer.Exit(code)


def _open_store(uri: str | None, code: int = 1) -> Store:
    try:
        return Store.from_uri(uri)
    except StoreError as exc:
        raise _fail(f"--store: {exc}", code) from None


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"earthops {__version__}")
        raise typer.Exit(0)


@app.command()
def crds(
    out_dirs: Annotated[list[Path] | None, typer.Option("--out", "-o", help="Write one file per CRD into this "
                                                        "folder (repeatable); default: print to stdout.")] = None,
) -> None:
    """Print (or write) the CustomResourceDefinitions generated from the models."""
    from earthops.control import crds as gen

    if not out_dirs:
        sys.stdout.write("---\n".join(gen.render(info) for info in KINDS.values()))
        return
    for folder in out_dirs:
        for path in gen.write(folder):
            err.print(f"wrote {path}", highlight=False)


@app.command()
def run(
    files: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or folder (repeatable).")],
    store: StoreOpt = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Use this Ray cluster instead of a "
                                                    "local Ray.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the order; run nothing.")] = False,
    port: PortOpt = 8080,
    predict_once: PredictOnceOpt = False,
) -> None:
    """Run manifests on this machine, in reference order. Exits non-zero if anything fails. A
    ModelDeployment is served on 127.0.0.1 until interrupted (Ctrl-C), or until --predict-once's answer."""
    from earthops.control.local import Executor, Unsupported

    try:
        resources = load_manifests(files)
    except ManifestError as exc:
        for problem in exc.problems:
            _error("invalid:", problem)
        raise typer.Exit(INVALID) from None
    if not resources:
        raise _fail(f"no resources found in {', '.join(map(str, files))}", INVALID)
    # the store is input too: one that cannot be opened or read refuses the run before anything runs
    st = _open_store(store, INVALID)
    executor = Executor(st, ray_address=ray_address, port=port)
    try:
        planned = executor.plan(resources)
    except ValueError as exc:
        for problem in str(exc).splitlines():
            _error("invalid:", problem)
        raise typer.Exit(INVALID) from None
    except StoreError as exc:
        raise _fail(f"--store {st.uri}: cannot read the resources already run there: {exc}", INVALID) from None
    if dry_run:
        out.print(f"valid: {len(planned)} resource(s); would run in this order against {st.uri}:")
        for i, r in enumerate(planned, 1):
            runnable = "" if KINDS[r.kind].runtime else "   (no runtime in this version: would be refused)"
            out.print(f"  {i}. {r.kind} {r.namespace}/{r.name}{runnable}")
        return
    try:
        executor.check_supported(planned)
    except Unsupported as exc:
        raise _fail(str(exc), UNSUPPORTED) from None
    try:
        executor.on_drift_event = lambda r, event: err.print(
            f"{r.kind} {r.namespace}/{r.name}: {event.type} {event.reason}: {event.message}", highlight=False,
            markup=False)
        _run_with_progress(executor, planned)
        if executor.servers:
            _serve_local(executor.servers, predict_once,
                         on_exit=lambda server: executor.record_stopped(server, on_purpose=False))
    finally:
        executor.stop()


def _run_with_progress(executor: Any, planned: list[Any]) -> None:
    """Run the resources, showing how it goes: live bars and trial table on a terminal, plain lines
    otherwise (display.RunLog); each resource ends with its run line, its final trial table and its row."""
    import contextlib

    from earthops.control import display

    failed = []
    live = _LiveView() if err.is_terminal else None
    view: Any = live or display.RunLog(lambda line: err.print(line, highlight=False, markup=False))
    console = live.console if live else err
    with live or contextlib.nullcontext():
        for r in planned:
            label = f"{r.kind} {r.namespace}/{r.name}"
            view.start(label)
            last: list[Any] = [None]

            def update(state: dict[str, Any], runtime: Any, last: list[Any] = last) -> None:
                last[0] = runtime if runtime is not None else last[0]
                view.update(runtime)

            executor.on_progress = update
            outcome = executor.apply(r)
            status = outcome.resource.get("status") or {}
            if live:
                live.finish(outcome.skipped)
            if status.get("phase") == "Failed" or (status.get("phase") == "Pending" and not outcome.skipped):
                failed.append((r, status))
            console.print(display.run_line(label, status, skipped=outcome.skipped), highlight=False, markup=False)
            trials = display.trial_table(last[0].detail if last[0] is not None else None)
            if trials is not None:  # the finished resource's trials, as its report has them
                header, rows, note = trials
                console.print(display.plain_table(header, rows) + "\n" + note, highlight=False, markup=False)
            header, rows = display.table_rows([outcome.resource])
            console.print(display.plain_table(header, rows), highlight=False, markup=False)
    for r, status in failed:
        # plain text: a runtime's message may hold brackets (regular expressions, lists) that markup would eat
        err.print(f"failed: {r.kind} {r.namespace}/{r.name}: {status.get('message', '')}", highlight=False, markup=False,
                  style="red")
    if failed:
        from earthops.control.status import invalid_input

        # every failure was the input's (a spec the data or the model refuses, a reference that failed): 2
        raise typer.Exit(INVALID if all(invalid_input(status) for _, status in failed) else 1)


def _serve_local(servers: list[Any], predict_once: bool, on_exit: Any) -> None:
    """Print where each local model server answers and an example request; then send one prediction
    (``--predict-once``) or serve until Ctrl-C/SIGTERM. The caller stops the servers."""
    from earthops.control.local import serving

    samples = {}
    for server in servers:
        sample, request_file = _example_request(server)
        samples[server.name] = sample
        out.print(f"{server.name}: serving at {server.url} (v1: /v1/models/{server.name}:predict, "
                  f"v2: /v2/models/{server.name}/infer)", highlight=False, markup=False)
        out.print(f"  example request{' (one test chip)' if request_file else ''}:\n    "
                  f"{serving.example_curl(server, request_file)}", highlight=False, markup=False)
    if predict_once:
        for server in servers:
            sample = samples[server.name]
            if sample is None:
                raise _fail(f"{server.name}: no test chip to send (see above)", 1)
            try:
                reply = serving.predict(server, sample["request"])
            except serving.ServerError as exc:
                raise _fail(f"{server.name}: {exc}", 1) from None
            out.print(f"{server.name}: prediction for test chip {sample['chip']}"
                      f"{' (true class: ' + sample['label'] + ')' if sample.get('label') else ''}: "
                      f"{_prediction_text(reply)}", highlight=False, markup=False)
        return
    out.print("serving until interrupted (Ctrl-C)", highlight=False)
    exited = serving.serve_until_interrupted(servers, on_exit)
    if exited is not None:
        raise _fail(f"the model server of {exited.name} stopped by itself: {exited.log_tail()}", 1)
    err.print("stopping the model server(s)", highlight=False)


def _example_request(server: Any) -> tuple[dict[str, Any] | None, Path | None]:
    """A test chip of the served model's dataset as a v2 request, written to a file for curl; (None, None)
    when there is none (the reason printed)."""
    import tempfile

    try:
        from earthops_runtime import facade
    except ImportError as exc:
        err.print(f"no example chip: the 'runtime' extra is not installed ({exc})", highlight=False, markup=False)
        return None, None
    try:
        sample = facade.test_request(server.models.primary.uri)
    except (LookupError, StoreError, OSError, ValueError) as exc:
        err.print(f"no example chip from {server.models.primary.uri}'s dataset: {exc}", highlight=False, markup=False)
        return None, None
    path = Path(tempfile.gettempdir()) / f"earthops-request-{server.name}.json"
    path.write_text(json.dumps(sample["request"]))
    return sample, path


def _prediction_text(reply: dict[str, Any]) -> str:
    """A v2 reply in one line: the version that answered and each output (long ones cut)."""
    parts = [f"model version {reply['model_version']}"] if reply.get("model_version") else []
    for output in reply.get("outputs") or []:
        data = list(output.get("data") or [])
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in data[:8])
        parts.append(f"{output.get('name')} = [{shown}{', ...' if len(data) > 8 else ''}]")
    return "; ".join(parts) or json.dumps(reply)[:300]


class _LiveView:
    """On a terminal: a progress bar per resource (with its runtime's stage) and the running resource's
    trial table under the bars."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        view = self

        class RunProgress(Progress):
            def get_renderables(self) -> Any:
                yield self.make_tasks_table(self.tasks)
                if view.trials is not None:
                    yield view.trials

        self.trials: Any = None
        self.bars = RunProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("{task.fields[stage]}"),
                                console=err, transient=False)
        self.console = self.bars.console
        self.task: Any = None

    def __enter__(self) -> _LiveView:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start(self, label: str) -> None:
        self.task = self.bars.add_task(label, total=None, unit="", stage="")

    def update(self, runtime: Any) -> None:
        from rich.text import Text

        from earthops.control import display

        if runtime is None:
            return
        p = runtime.progress
        trials = display.trial_table(runtime.detail)
        if trials is not None:
            self.trials = Text(display.plain_table(trials[0], trials[1]))
        self.bars.update(self.task, completed=p.done, total=p.total, unit=p.unit, stage=runtime.stage)

    def finish(self, skipped: bool) -> None:
        task = self.bars.tasks[self.task]
        total = task.total or 1
        self.bars.update(self.task, total=total, completed=total, stage="",
                         unit="(unchanged)" if skipped else task.fields.get("unit", ""))
        self.trials = None  # the live table goes; the final one is printed with the run line


def _select(st: Store, kind: str | None, name: str | None, namespace: str | None) -> list[dict[str, Any]]:
    from earthops.control.local import stored_resources

    try:
        kinds = [kind_for(kind).kind] if kind and kind != "all" and kind != "earthops" else list(KINDS)
    except KeyError as exc:
        raise _fail(exc.args[0], INVALID) from None
    try:
        docs = stored_resources(st, kinds, namespace)
    except StoreError as exc:
        raise _fail(str(exc), 1) from None
    if name:
        docs = [d for d in docs if d["metadata"]["name"] == name]
        if not docs:
            raise _fail(f'{kinds[0]} "{name}" not found in {st.uri}', 1)
    return [{k: v for k, v in d.items() if k != "specHash"} for d in docs]


@app.command()
def get(
    kind: Annotated[str | None, typer.Argument(help="Kind (eodatasets, tex, ...) or models (the model registry); "
                                               "default: all earthops kinds.")] = None,
    name: Annotated[str | None, typer.Argument(help="Resource name.")] = None,
    namespace: NamespaceOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table, wide, json, yaml or name.")] = Output.table,
    store: StoreOpt = None,
) -> None:
    """List resources run on this machine, like `kubectl get`; `get models [NAME]` lists the model registry."""
    from earthops.control.display import plain_table, table_rows

    if kind and kind.lower() in MODEL_TARGETS:
        _get_models(_open_store(store), name, namespace, output)
        return
    docs = _select(_open_store(store), kind, name, namespace)
    if output is Output.json:
        data = docs[0] if name else {"apiVersion": "v1", "kind": "List", "items": docs}
        out.print(json.dumps(data, indent=2))
        return
    if output is Output.yaml:
        out.print(yaml.safe_dump(docs[0] if name else {"apiVersion": "v1", "kind": "List", "items": docs},
                                 sort_keys=False).rstrip())
        return
    if output is Output.name:
        for d in docs:
            out.print(f"{KINDS[d['kind']].singular}.{d['apiVersion'].split('/')[0]}/{d['metadata']['name']}")
        return
    if not docs:
        err.print(f"No resources found{f' in {namespace} namespace' if namespace else ''}.", highlight=False)
        return
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    blocks = []
    for k, items in by_kind.items():
        header, rows = table_rows(items, wide=output is Output.wide, namespaces=namespace is None)
        if len(by_kind) > 1:
            rows = [[f"{KINDS[k].singular}.earthops.dev/{r[1]}", *r[2:]] if namespace is None else
                    [f"{KINDS[k].singular}.earthops.dev/{r[0]}", *r[1:]] for r in rows]
            header = header[1:] if namespace is None else header
        blocks.append(plain_table(header, rows))
    out.print("\n\n".join(blocks))


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="Kind (eodataset, tex, ...) or model.")],
    name: Annotated[str, typer.Argument(help="Resource name (a model: NAME or NAME/VERSION).")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")] = "default",
    store: StoreOpt = None,
) -> None:
    """Show one resource in detail, like `kubectl describe`; `describe model NAME[/VERSION]` shows a
    registered model version (default: the latest)."""
    from earthops.control.display import describe as text

    if kind.lower() in MODEL_TARGETS:
        _describe_model(_open_store(store), name, namespace)
        return
    docs = _select(_open_store(store), kind, name, namespace)
    out.print(text(docs[0]), highlight=False)
    if docs[0].get("kind") == "AblationStudy":
        _print_ablation_ranking(docs[0])
    if docs[0].get("kind") == "ModelDeployment":
        _print_drift(docs[0], store)


def _print_drift(doc: dict[str, Any], store: str | None) -> None:
    """A ModelDeployment's per-band drift table, from the latest report in its store (``spec.storage``,
    else ``--store``)."""
    from earthops.control.display import drift_table
    from earthops.core.monitoring import read_latest

    spec = doc.get("spec") or {}
    if not (spec.get("monitoring") or {}).get("enabled", True):
        return
    uri = (spec.get("storage") or {}).get("uri") or store
    meta = doc.get("metadata") or {}
    try:
        report = read_latest(_open_store(uri), meta.get("namespace", "default"), meta.get("name", ""))
    except (StoreError, OSError, ValueError) as exc:
        err.print(f"the drift report could not be read: {exc}", highlight=False, markup=False)
        return
    out.print("\n" + (drift_table(report) if report else "Drift: no monitoring window has closed yet"),
              highlight=False, markup=False)


def _print_ablation_ranking(doc: dict[str, Any]) -> None:
    """A finished AblationStudy's ranked components, read from its published run's summary.json."""
    from earthops.control.display import ablation_ranking

    results = (doc.get("status") or {}).get("results")
    if not results or (doc.get("status") or {}).get("phase") != "Succeeded":
        return
    try:
        summary = Store.from_uri(str(results)).read_json("summary.json")
    except (StoreError, OSError, ValueError) as exc:
        err.print(f"the ranked components could not be read from {results}: {exc}", highlight=False, markup=False)
        return
    out.print("\n" + ablation_ranking(summary), highlight=False, markup=False)


# --- the model registry (`get models`, `describe model`) ------------------------------------------

MODEL_TARGETS = ("models", "model")


def _get_models(st: Store, name: str | None, namespace: str | None, output: Output) -> None:
    """The registered model versions, one row each (newest version of a model last)."""
    from earthops.control import display
    from earthops.control.display import age, plain_table
    from earthops.core import registry

    try:
        rows = registry.list_models(st, namespace, name)
    except (registry.RegistryError, StoreError) as exc:
        raise _fail(str(exc), 1) from None
    if name and not rows:
        known = sorted({f"{r['namespace']}/{r['name']}" for r in registry.list_models(st, namespace)})
        raise _fail(f'model "{name}" not found in {st.uri}; models: {", ".join(known) or "(none)"}', 1)
    if output in (Output.json, Output.yaml):
        data = {"kind": "ModelList", "items": rows}
        text = json.dumps(data, indent=2) if output is Output.json else yaml.safe_dump(data, sort_keys=False).rstrip()
        out.print(text, highlight=False, markup=False)
        return
    if output is Output.name:
        for r in rows:
            out.print(f"model/{r['name']}/{r['version']}", highlight=False, markup=False)
        return
    if not rows:
        err.print(f"No models found{f' in {namespace} namespace' if namespace else ''}.", highlight=False)
        return
    wide = output is Output.wide
    header = ["NAME", "VERSION", "ARCHITECTURE", "TASK", "METRICS", "DATASET", "EXPERIMENT", "AGE"]
    header = (["NAMESPACE"] if namespace is None else []) + header + (["URI"] if wide else [])
    table = []
    for r in rows:
        metrics = r["metrics"] if wide else registry.headline_metrics(r)
        row = [r["name"], r["version"], r["architecture"] or "", r["task"] or "", display.metrics_text(metrics),
               display.dataset_label(r["dataset"]), display.experiment_label(r["experiment"]), age(r["created"])]
        table.append(([r["namespace"]] if namespace is None else []) + row + ([r["uri"]] if wide else []))
    out.print(plain_table(header, table), highlight=False, markup=False)


def _describe_model(st: Store, ref: str, namespace: str) -> None:
    from earthops.control import display
    from earthops.core import registry

    name, _, version = ref.partition("/")
    try:
        version, item = registry.read_item(st, namespace, name, version or registry.LATEST)
    except (registry.RegistryError, StoreError) as exc:
        raise _fail(str(exc), 1) from None
    uri = st.url(registry.version_key(namespace, name, version))
    out.print(display.describe_model(item, namespace=namespace, name=name, version=version, uri=uri),
              highlight=False, markup=False)


@app.command()
def operator(
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace "
                                                         "(repeatable; globs such as 'team-*' allowed).")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")] = False,
    standalone: Annotated[bool, typer.Option("--standalone", help="Run without peering (a single replica).")] = False,
    peering: Annotated[str | None, typer.Option("--peering", help="Peering object name: replicas coordinate so "
                                                "only one handles events.")] = None,
    liveness_port: Annotated[int, typer.Option("--liveness-port", help="Port of the liveness endpoint "
                                               "(GET /healthz).")] = 8080,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Port of the Prometheus endpoint "
                                              "(GET /metrics); 0 disables it.")] = 9090,
    store: StoreOpt = None,
    runtime_image: Annotated[str, typer.Option("--runtime-image", envvar="EARTHOPS_RUNTIME_IMAGE",
                                               help="Ray image with earthops_runtime, for resources that name "
                                               "none in spec.compute.image, and of ModelDeployments' predictor "
                                               "containers.")] = DEFAULT_RUNTIME_IMAGE,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option("--log-format", help="text or json.")] = "text",
) -> None:
    """Run the operator (kopf) against the current Kubernetes context or in-cluster config."""
    try:
        from earthops.control.handlers.process import OperatorOptions, run_operator
    except ImportError as exc:
        raise _fail(f"the operator needs the 'operator' extra (pip install 'earthops[operator]'): {exc}", 1) from None
    if all_namespaces and namespace:
        raise _fail("--all-namespaces and --namespace exclude each other", INVALID)
    if not all_namespaces and not namespace:
        raise _fail("say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces", INVALID)
    if standalone and peering:
        raise _fail("--standalone and --peering exclude each other", INVALID)
    if log_level not in {"debug", "info", "warning", "error"}:
        raise _fail(f"--log-level {log_level!r}: accepted: debug, info, warning, error", INVALID)
    if log_format not in {"text", "json"}:
        raise _fail(f"--log-format {log_format!r}: accepted: text, json", INVALID)
    for port, flag in ((liveness_port, "--liveness-port"), (metrics_port, "--metrics-port")):
        if not 0 <= port <= 65535 or (port == 0 and flag == "--liveness-port"):
            raise _fail(f"{flag} {port}: accepted: 1-65535" + (" or 0" if flag == "--metrics-port" else ""), INVALID)
    code = run_operator(OperatorOptions(
        namespaces=tuple(namespace or ()), all_namespaces=all_namespaces, standalone=standalone or not peering,
        peering=peering, liveness_port=liveness_port, metrics_port=metrics_port, store=store,
        runtime_image=runtime_image,
        log_level=log_level, log_format=log_format,
    ))
    raise typer.Exit(code)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="A registered model: NAME or NAME/VERSION (default: its latest).")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the model.")] = "default",
    canary: Annotated[str | None, typer.Option("--canary", help="A second version (VERSION or NAME/VERSION) that "
                                               "answers --canary-percent of the requests.")] = None,
    canary_percent: Annotated[int | None, typer.Option("--canary-percent", min=0, max=100,
                                                       help="The canary's share of the requests (0-100).")] = None,
    port: PortOpt = 8080,
    predict_once: PredictOnceOpt = False,
    store: StoreOpt = None,
) -> None:
    """Serve a registered model on 127.0.0.1 with the predictor a ModelDeployment runs (KServe v1 and v2
    protocols), until interrupted."""
    from earthops.api import parse_resource
    from earthops.control.local import Executor, serving
    from earthops.control.reconcile.inferenceservice import resolve_models
    from earthops.control.status import input_reason

    if (canary is None) != (canary_percent is None):
        raise _fail("--canary and --canary-percent go together", INVALID)
    name, _, version = model.partition("/")
    spec: dict[str, Any] = {"modelRef": {"model": name, **({"version": version} if version else {})}}
    if canary is not None:
        canary_name, _, canary_version = canary.rpartition("/")
        spec["canary"] = {"modelRef": {"model": canary_name or name, "version": canary_version},
                          "trafficPercent": canary_percent}
        spec["deploymentMode"] = "Knative"  # what a canary needs on a cluster; the local server splits itself
    try:
        resource = parse_resource({"apiVersion": "earthops.dev/v1alpha1", "kind": "ModelDeployment",
                                   "metadata": {"name": name, "namespace": namespace}, "spec": spec}, "earthops serve")
    except ManifestError as exc:
        for problem in exc.problems:
            _error("invalid:", problem)
        raise typer.Exit(INVALID) from None
    executor = Executor(_open_store(store, INVALID))
    models = resolve_models(resource, lambda kind, ref: None, executor.registry(resource), wait=False)
    if not models.ready:  # a model that is not registered, a failed experiment: bad input, as `run` says
        raise _fail("; ".join(b.message for b in models.blockers),
                    INVALID if all(input_reason(b.reason) for b in models.blockers) else 1)
    try:
        server = serving.start(resource, models, port=port)
    except serving.ServerError as exc:
        raise _fail(str(exc), 1) from None
    try:
        _serve_local([server], predict_once, on_exit=lambda s: None)
    finally:
        server.stop()


@app.command()
def search(
    collection: Annotated[list[str] | None, typer.Option("--collection", "-c", help="Collection id "
                                                         "(repeatable: any of them).")] = None,
    bbox: Annotated[str | None, typer.Option("--bbox", help="W,S,E,N in WGS84 degrees: items whose geometry "
                                             "intersects it (W > E crosses the antimeridian).")] = None,
    datetime: Annotated[str | None, typer.Option("--datetime", help="RFC 3339 instant or interval A/B, '..' for "
                                                 "an open end (2020-01-01/2020-06-30, 2021-01-01T00:00:00Z/..).")] = None,
    cql2_filter: Annotated[str | None, typer.Option("--filter", help="CQL2 text (\"eo:cloud_cover < 10 AND "
                                                    "platform = 'sentinel-2a'\") or CQL2-JSON.")] = None,
    q: Annotated[str | None, typer.Option("--q", "-q", help="Free text over ids, titles, descriptions, keywords "
                                          "and string properties: terms (OR), \"quoted phrases\", AND, OR, NOT, "
                                          "+must, -mustnot; results by relevance.")] = None,
    sortby: Annotated[str | None, typer.Option("--sortby", help="Sort fields, '-' for descending "
                                               "(-eo:cloud_cover,+id); before relevance and newest first.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many items (newest "
                                              "first).")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, or json (a GeoJSON FeatureCollection "
                                        "of the STAC items).")] = "table",
    store: StoreOpt = None,
) -> None:
    """Search the STAC items of the store's published datasets and models: collection, bbox, datetime,
    CQL2 filter, free text."""
    if output not in ("table", "json"):
        raise _fail(f"--output {output!r}: accepted: table, json", INVALID)
    try:
        from earthops_runtime import facade as index_search
    except ImportError as exc:
        raise _fail(f"search needs the 'runtime' extra (pip install 'earthops[runtime]'): {exc}", 1) from None
    st = _open_store(store)
    flags = {"collections": "--collection", "bbox": "--bbox", "datetime": "--datetime", "filter": "--filter",
             "limit": "--limit", "q": "--q", "sortby": "--sortby"}
    try:
        items = index_search.search(st, collections=collection or None, bbox=bbox, datetime=datetime,
                                    filter=cql2_filter, limit=limit, q=q, sortby=sortby)
    except index_search.SearchError as exc:
        raise _fail(f"{flags.get(exc.parameter, exc.parameter)}: {exc.message}", INVALID) from None
    except StoreError as exc:
        raise _fail(str(exc), 1) from None
    if output == "json":
        typer.echo(json.dumps(index_search.feature_collection(items), indent=2))
        return
    if not items:
        err.print("No items found.", highlight=False)
        return
    from earthops.control.display import plain_table

    rows = []
    for item in items:
        props = item.get("properties") or {}
        when = props.get("datetime") or f"{props.get('start_datetime') or '..'}/{props.get('end_datetime') or '..'}"
        box = item.get("bbox")
        rows.append([item["id"], item.get("collection") or "", when,
                     ",".join(f"{v:.4f}" for v in box) if box else ""])
    out.print(plain_table(["ID", "COLLECTION", "DATETIME", "BBOX"], rows), highlight=False, markup=False)


catalog_app = typer.Typer(help="The store's STAC catalog: serve it as a STAC API.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("serve")
def catalog_serve(
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port (1-65535).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on: loopback by default; 0.0.0.0 in "
                                      "a container.")] = "127.0.0.1",
    presign: Annotated[int | None, typer.Option("--presign", min=1, max=604800, help="Also give each s3:// asset "
                                                "of the store a presigned HTTPS link valid this many seconds "
                                                "(alternate.https), for clients without S3 access.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "warning",
    store: StoreOpt = None,
) -> None:
    """Serve the store's published datasets and models as a STAC API (pystac-client, QGIS, STAC Browser):
    core, collections, features, item search, filter (CQL2 text/JSON), sort, fields, free text."""
    if not 1 <= port <= 65535:
        raise _fail(f"--port {port}: accepted: 1-65535", INVALID)
    if log_level not in {"debug", "info", "warning", "error"}:
        raise _fail(f"--log-level {log_level!r}: accepted: debug, info, warning, error", INVALID)
    try:
        from earthops_runtime import facade as runtime
    except ImportError as exc:
        raise _fail(f"catalog serve needs the 'runtime' extra (pip install 'earthops[runtime]'): {exc}", 1) from None
    st = _open_store(store)
    err.print(f"STAC API over {st.url('')} on http://{host}:{port}/ (Ctrl-C stops it)", highlight=False,
              markup=False)
    try:
        runtime.serve_catalog(st, host=host, port=port, presign_seconds=presign, log_level=log_level)
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc}", 1) from None


@app.command()
def samples(
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache folder (default: "
                                               "$EARTHOPS_CACHE/samples or ~/.cache/earthops/samples).")] = None,
) -> None:
    """Fetch the real sample imagery (BigEarthNet Sentinel-1/2 example patches) and catalogue it in STAC."""
    try:
        from earthops_runtime import facade as s
    except ImportError as exc:
        raise _fail(f"samples need the 'runtime' extra (pip install 'earthops[runtime]'): {exc}", 1) from None
    fetching = "fetching bigearthnet-common from the package registry ..."
    if not err.is_terminal:  # no spinner in a log: say it in a line
        err.print(fetching, highlight=False, markup=False)
    with err.status(fetching):
        try:
            data = s.fetch_bigearthnet(cache)
            catalog = s.bigearthnet_catalog(cache)
        except s.SampleFetchError as exc:
            raise _fail(f"could not fetch the samples: {exc}", 1) from None
    out.print(f"data:     {data}", highlight=False)
    out.print(f"catalog:  {catalog}", highlight=False)
    for collection in sorted(p for p in catalog.parent.iterdir() if (p / "collection.json").is_file()):
        items = [d for d in collection.iterdir() if (d / f"{d.name}.json").is_file()]
        out.print(f"  {collection.name}: {len(items)} scenes (STAC items)", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
