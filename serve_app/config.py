"""Typed settings. Every model refuses unknown keys, so a typo fails loudly at start."""

from __future__ import annotations

import random
import socket
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

IntegerDatatype = Literal["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
Datatype = Literal["BOOL", IntegerDatatype, "FP16", "FP32", "FP64", "BYTES"]  # typing flattens the nested Literal

DEFAULT_DECISION_THRESHOLD = 0.5
"""ModelConfig.decision_threshold where a model's config does not set it."""

# Names end up in URLs, deployment names and file paths: keep them to a safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    """A named tensor as the Open Inference Protocol describes it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")
    """Tensor name, as the client sends it and as the model graph names it."""
    datatype: Datatype
    """Protocol datatype (FP32, INT64, BYTES, ...)."""
    dims: list[int] = Field(min_length=1)
    """Full shape, batch dimension first; -1 marks a variable dimension."""

    @property
    def one_value_per_row(self) -> bool:
        """A column of scalars: shape [rows] or [rows, 1]."""
        return self.dims[1:] in ([], [1])

    @model_validator(mode="after")
    def _dims_are_valid(self) -> TensorSpec:
        if any(d < -1 for d in self.dims):
            raise ValueError(f"dims {self.dims}: each must be -1 (variable) or a size >= 0")
        return self


RAY_SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": "60",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "31500",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "32500",
}
"""Ray Serve's environment for serve-app's cluster (every Ray process reads it at start; `make run`,
cluster.yaml, the tests and the benchmarks set it): Ray's high-throughput bundle, and Ray's HAProxy
on every node in front of the ingress replicas' own ports (direct ingress) on 8000 and 9000, 2-2.5x
the requests per second of Serve's Python proxy (docs/speed.md). HAProxy's server timeout replaces
the proxy's request_timeout_s. A stopping Router drains 5 s, not Ray's 30 s (meant for a cloud load
balancer; here Ray reconfigures HAProxy as the replica stops). The Routers' gRPC ports stay below
Linux's ephemeral range (32768-60999), where replica-to-replica gRPC servers take OS-assigned ports."""


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a listener of one more Ray cluster on this machine (tests,
    benchmarks). Drawn from 20000-29999, between Ray's worker ports (10002-19999) and its direct
    ingress ports (30000-32500) and below Linux's ephemeral range: Ray's processes bind port 0 after
    this is picked and before the listener binds it, and would otherwise take it meanwhile."""
    for _ in range(1000):
        port = random.randrange(20000, 30000)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port in 20000-29999")


def haproxy_side_ports_env(stats_port: int, metrics_port: int) -> dict[str, str]:
    """HAProxy's stats and metrics ports for one Ray cluster. Ray's defaults (8404, 9101) are one per
    machine: a second cluster on the same machine (tests, benchmarks) needs ports of its own."""
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port)}


class DynamicBatching(Strict):
    """How the model replica groups concurrent requests (Ray Serve's @serve.batch)."""

    max_batch_size: int = Field(32, ge=1)
    """Most rows merged into one model call; a request with this many rows runs alone at once."""
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=10.0)
    """How long the first request of a batch waits for more while the model is idle. Requests that
    arrive while the model runs always wait for it and go in the next call together, so no window
    is needed to form batches under load (Triton's max_queue_delay, 0 by default there too)."""


class Instances(Strict):
    """Replicas of the model deployment and what each one reserves."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs each replica reserves (fractions let several models share one GPU): the default for
    `ray_actor_options.num_gpus`, which a Serve config may replace. A replica runs on CUDA exactly
    when Ray gave it a GPU, whichever of the two reserved it."""


class VersionPolicy(Strict):
    """Which versions on disk are served: the newest N, or a fixed list (Triton's policy)."""

    latest: int | None = Field(None, ge=1)
    specific: list[int] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        if (self.latest is None) == (self.specific is None):
            raise ValueError("set exactly one of 'latest' or 'specific'")
        return self


class RuntimeOptions(Strict):
    """Knobs of the inference runtime inside each model replica."""

    intra_op_num_threads: int | None = Field(None, ge=1)
    """Threads for one model call; default: the replica's num_cpus, at least one."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when Ray gave the replica a GPU, else the CPU (a GPU given but unusable: one
    warning, then the CPU). cpu: the CPU whatever was given. cuda: CUDA, and a replica without a
    usable GPU fails to start, naming this setting."""
    tensorrt: bool = False
    """ONNX Runtime on a GPU only: ask for the TensorRT provider ahead of CUDA (needs TensorRT's
    libraries); engines are cached per model version and built for 1 to max_batch_size rows."""
    tensorrt_cache_dir: str | None = None
    """TensorRT only: where engines are cached, in <model>/<version> under it; default:
    tensorrt_cache/ beside each version's model file."""
    tensorrt_precision: Literal["fp32", "fp16", "int8"] = "fp32"
    """TensorRT only: let it build FP16 or INT8 kernels (trt_fp16_enable / trt_int8_enable)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """PyTorch only: the dtype the module runs in (inputs are cast to it)."""
    warmup: bool = True
    """Run one batch of zeros at load so the first client request is not the slow one."""


class Ranking(Strict):
    """A ranker: each request is one query and its rows are the candidates; the answer adds the ids
    of the best `top_k` candidates, best first, ranked by the first output's score."""

    candidates: str
    """The input (a raw column the client sends) that names each row's candidate."""
    top_k: int = Field(10, ge=1)
    output: str = Field("top_k", pattern=NAME_PATTERN)
    """The added output: the request's best candidate ids, shape [min(top_k, rows)]."""


class ModelConfig(Strict):
    """<repository>/<model>/config.yaml, laid out after Triton's model configuration."""

    name: str = Field(pattern=NAME_PATTERN)
    platform: Literal["onnxruntime_onnx", "pytorch_libtorch"]
    """onnxruntime_onnx reads model.onnx; pytorch_libtorch reads model.pt (TorchScript)
    or model.pt2 (torch.export program)."""
    description: str = ""
    decision_threshold: float = DEFAULT_DECISION_THRESHOLD
    """A score (the first value of a row of the first numeric output) at or above it is a positive
    decision: shadow agreement, label feedback and the batch job's comparison all read it."""
    max_batch_size: int = Field(256, ge=1)
    """Most rows one request may carry, and the cap for dynamic batching."""
    inputs: list[TensorSpec] = Field(min_length=1)
    """The model's own input tensors (after preprocessing)."""
    outputs: list[TensorSpec] = Field(min_length=1)
    dynamic_batching: DynamicBatching = DynamicBatching()
    instances: Instances = Instances()
    version_policy: VersionPolicy = VersionPolicy(latest=1)
    runtime: RuntimeOptions = RuntimeOptions()
    ranking: Ranking | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        for spec in (*self.inputs, *self.outputs):
            if spec.dims[0] != -1:
                raise ValueError(f"tensor '{spec.name}': dims[0] is the batch dimension and must be -1")
        if self.dynamic_batching.max_batch_size > self.max_batch_size:
            dynamic, largest = self.dynamic_batching.max_batch_size, self.max_batch_size
            raise ValueError(f"dynamic_batching.max_batch_size ({dynamic}) exceeds max_batch_size ({largest})")
        return self


class ExperimentSettings(Strict):
    """How a champion/challenger experiment decides (see serve_app/experiments/sequential.py)."""

    metric: Literal["reward", "accuracy"] = "reward"
    """reward: mean feedback reward per request; accuracy: share of predictions matching feedback labels."""
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    """Chance of a false decision, valid however often the test is checked (always-valid p-values)."""
    mixture_sd: float = Field(0.02, gt=0.0)
    """Spread of the mixing distribution over the effect, in metric units: about the effect worth finding."""
    min_samples_per_arm: int = Field(200, ge=10)
    """Outcomes each arm needs before any decision."""
    min_duration_s: float = Field(0.0, ge=0.0)
    """Time since the experiment started before any promotion (604800 for 'after 7 days')."""
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Guardrail: a challenger failing more requests than this (after min_samples_per_arm) is stopped."""
    max_p99_latency_ms: float | None = Field(None, gt=0.0)
    """Guardrail: a challenger slower than this at p99 is stopped."""
    auto_promote: bool = True
    """Promote or stop on the test's decision; otherwise only report it and let ops decide."""


class TrafficSettings(Strict):
    """Which versions of one model answer, and in what shares. Live: the router's user_config."""

    champion: int
    challenger: int | None = None
    challenger_weight: float = Field(0.0, ge=0.0, le=1.0)
    """Share of routing keys sent to the challenger; the champion takes the rest."""
    shadows: list[int] = []
    """Versions that receive mirrored traffic; their answers are logged, never returned."""
    shadow_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of requests mirrored to every shadow version."""

    @model_validator(mode="after")
    def _consistent(self) -> TrafficSettings:
        if self.challenger is None and self.challenger_weight > 0:
            raise ValueError("challenger_weight > 0 needs a challenger version")
        if self.challenger == self.champion:
            raise ValueError(f"version {self.champion} cannot be both champion and challenger")
        production = {self.champion, self.challenger}
        if production & set(self.shadows):
            raise ValueError(f"shadow versions {sorted(production & set(self.shadows))} also serve production")
        return self

    @property
    def versions(self) -> list[int]:
        """Every version this model needs loaded."""
        return sorted({self.champion, *([self.challenger] if self.challenger else []), *self.shadows})


class AlertSettings(Strict):
    """Where a drift alert goes. Both may be set; each gets the evidence as JSON."""

    webhook_url: str | None = Field(None, pattern=r"^https?://")
    """POSTed the alert as a JSON body."""
    command: list[str] | None = Field(None, min_length=1)
    """Run (no shell) with the alert as JSON on stdin: e.g. a retraining job. Its environment holds
    PATH, HOME, the locale, TMPDIR and VIRTUAL_ENV as set, and the variables named in pass_env."""
    pass_env: list[str] = []
    """Variables of the monitor's environment the command also gets (e.g. a job's credentials)."""
    timeout_s: float = Field(10.0, gt=0.0)
    """Longest a webhook call (redirects are not followed) or a command may take, start to end; a late
    one is abandoned and counted."""


class DriftSettings(Strict):
    """Drift monitoring of one model: its inputs against the reference sample, its scores against
    the scores each version gives that sample."""

    mode: Literal["window", "online"] = "window"
    """window: a test per window of rows (KS for numeric, Chi-squared for categorical features; KS
    for scores). online: alibi-detect's online detectors row by row for numeric features and scores
    (categorical features keep the windowed Chi-squared test); it needs the `drift` extra."""
    backend: Literal["auto", "alibi", "scipy"] = "auto"
    """Window mode's tests. auto: alibi-detect (TabularDrift, KSDrift) when it is installed, else the
    built-in SciPy backend; alibi: require alibi-detect (the `drift` extra); scipy: the built-in
    backend, the same tests with no source-available code. Either gives the same p-values."""
    window_size: int = Field(1000, ge=20)
    """Rows per check (per version)."""
    window_s: float | None = Field(None, gt=0.0)
    """Also check a partial window this long after its first row, once it has min_window_size rows."""
    min_window_size: int = Field(100, ge=20)
    """Fewest rows a time-closed window needs; fewer wait for more."""
    p_val: float = Field(0.05, gt=0.0, lt=0.5)
    """Window mode: the chance of a false alarm per window of each test (features, after the
    correction; scores): a window flagged by either has at most 2 x p_val. Alerts need
    alert_after_windows windows in a row."""
    correction: Literal["bonferroni", "fdr"] = "bonferroni"
    """Multiple-testing correction across features."""
    features: list[str] | None = None
    """Inputs to watch; default: the preprocessor's features, else the reference's columns that are
    one-value-per-row model inputs."""
    reference: str | None = None
    """A Parquet file of raw inputs; default: reference.parquet beside each model version."""
    max_reference_rows: int = Field(5000, ge=100)
    """A larger reference is sampled down to this many rows (seeded)."""
    online_detector: Literal["cvm", "mmd"] = "cvm"
    """Online mode: CVMDriftOnline (per feature) or MMDDriftOnline (all numeric features together)."""
    ert: float = Field(1000.0, gt=0.0)
    """Online mode: expected rows between false alarms."""
    online_window_size: int = Field(50, ge=10)
    """Online mode: rows in the detector's test window."""
    n_bootstraps: int | None = Field(None, ge=100)
    """Online mode: simulations that configure the thresholds; default 2 x ert x features. Tens of
    seconds of CPU: configure online detectors offline with `serve-app drift fit` and drop them in."""
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)
    """Share of requests the router sends to the monitor."""
    max_buffered_rows: int = Field(20_000, ge=100)
    """Rows waiting, in the router and in the monitor each; beyond it, rows are dropped and counted."""
    alert_after_windows: int = Field(2, ge=1)
    """Consecutive drifting windows before an alert: it fires once, until a clean window clears it."""
    alert: AlertSettings = AlertSettings()
    on_drift: Literal["alert", "freeze_experiment"] = "alert"
    """freeze_experiment: an alert also pauses automatic decisions in the model's experiment until it
    clears (a comparison on drifting inputs is not trustworthy); guardrails still act."""
    history_size: int = Field(50, ge=1)
    """Window summaries kept for the drift endpoint; the storage keeps every check."""

    @model_validator(mode="after")
    def _windows_fit(self) -> DriftSettings:
        if self.window_size > self.max_buffered_rows:
            limit = f"max_buffered_rows {self.max_buffered_rows}"
            raise ValueError(f"window_size {self.window_size} exceeds {limit}: no window would ever fill")
        if self.min_window_size > self.window_size:
            raise ValueError(f"min_window_size {self.min_window_size} exceeds window_size {self.window_size}")
        return self

    @model_validator(mode="after")
    def _online_needs_alibi(self) -> DriftSettings:
        if self.mode == "online" and self.backend == "scipy":
            raise ValueError(
                "mode 'online' needs alibi-detect's online detectors, and backend 'scipy' has window mode only: "
                "use mode 'window', or backend 'auto' or 'alibi' with the drift extra"
            )
        return self


class GraphArgs(Strict):
    """The `args` of an application in configs/*.yaml, shared by every graph builder."""

    repository: str
    """Root of the model repository: a local folder, relative to the working directory."""
    models: list[str] | None = None
    """Models to serve; default: every model in the repository."""
    num_replicas_ingress: int = Field(1, ge=1)
    """Router replicas; each routes on its own, statistics and decisions stay in one place."""
    num_cpus_ingress: float = Field(0.1, ge=0.0)
    """CPUs reserved by the ingress and preprocessor replicas (they mostly wait)."""
    storage_uri: str | None = None
    """Where the prediction log and experiment state go: a local folder or a pyarrow.fs URI.
    None: no prediction log."""
    log_max_values: int = Field(4096, ge=0)
    """Values of a request's inputs (and, apart, of its outputs) that the prediction log keeps whole;
    beyond it, each tensor is logged as a digest: shape, dtype, SHA-256 of its bytes, first values."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest inference request body (HTTP 413, gRPC RESOURCE_EXHAUSTED beyond it)."""
    max_parsing_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    """Bytes of HTTP bodies one router replica parses at once (declared, or the limit if chunked or
    compressed); past it a request gets 503 at once. One body alone always passes."""
    max_ongoing_requests_ingress: int = Field(1000, ge=1)
    """Concurrent requests one ingress or preprocessor replica takes. They are async and
    cheap per request; Serve's default of 5 makes callers back off and retry under load."""
    max_queued_requests: int = Field(200, ge=-1)
    """Requests a router replica may keep waiting for one version beyond what the version's replicas
    take (Serve's max_queued_requests; -1: no bound). Beyond it a request gets 503 at once, so an
    overload sheds the excess instead of every request timing out."""
    merge_before_hop: bool = True
    """Batching before the hop: the router merges requests for one version that arrive while its calls
    are in flight into one call (rows concatenated, up to the version's dynamic max_batch_size), so
    that under load a batch, not each request, pays the hop to the model replica. Each request keeps
    its own answer, error, timeout and log row. Off: one call per request."""
    in_router: list[str] = []
    """Models whose versions run inside each router replica's process, with no deployments of their
    own: no hop per call, for small CPU models (as MLServer and Triton run every model). Batching is
    the router's merging, by config.yaml's dynamic_batching; they scale with num_replicas_ingress."""
    merge_calls_per_replica: int = Field(2, ge=1)
    """Merged calls in flight per model replica (of config.yaml's instances.num_replicas): one
    running, the next one gathering."""
    drift: dict[str, DriftSettings] = {}
    """Models whose inputs and scores the drift monitor watches."""
    preprocessing: Literal["in_model", "replica"] = "in_model"
    """Where a version's preprocessor runs: inside its model replica (no hop between the stages, as
    Triton's ensembles avoid a round trip), or in a preprocessor replica of its own (scaled apart)."""
    versions: dict[str, Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]] = {}
    """Versions to serve per model, instead of its config's version_policy (what the repository
    API's load and unload change; an experiment's versions are served in any case)."""

    def with_resolved_paths(self) -> GraphArgs:
        """Local paths made absolute here, in the process that reads the config, so that every
        replica (and a batch job's actors) agree whatever their working directory."""

        from serve_app.storage import absolute_uri  # pyarrow's filesystems, not needed to read a config

        def resolved(path: str | None) -> str | None:
            return None if path is None else absolute_uri(path)

        drift = {m: d.model_copy(update={"reference": resolved(d.reference)}) for m, d in self.drift.items()}
        paths = {"repository": resolved(self.repository), "storage_uri": resolved(self.storage_uri)}
        return self.model_copy(update={**paths, "drift": drift})


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the file and the dotted field path."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{source}: field '{field}': {item['msg']}")
    return "; ".join(problems)


class ExperimentArgs(Strict):
    traffic: TrafficSettings
    """The split a fresh experiment starts with; after that, `serve deploy` with a changed
    traffic section starts anew, while an unchanged one keeps the persisted state."""
    settings: ExperimentSettings = ExperimentSettings()


class ExperimentGraphArgs(GraphArgs):
    """Args of graphs.champion_challenger: the single-model args plus an experiment per model."""

    storage_uri: str = "serve_app_storage"
    experiments: dict[str, ExperimentArgs] = Field(min_length=1)
    feedback_window_requests: int = Field(200_000, ge=1)
    """Latest requests the experiment store remembers for feedback to join on (about 250 bytes
    each); feedback for an older one is logged and counted as unmatched."""


class BatchSettings(Strict):
    """A batch job over Parquet (configs/batch*.yaml): the graph of an application in a Serve
    config, scored offline with Ray Data. Command-line flags override these."""

    serve_config: str
    """The Serve config whose application args define the graph (relative to this file)."""
    app: str | None = None
    """The application in serve_config; default: the first."""
    model: str | None = None
    """Model to score; default: the one model with an experiment, else the only model served."""
    version: int | None = None
    """Version to score; default: the experiment's champion, else the newest served version."""
    compare: bool = False
    """Also score the experiment's challenger in the same pass, and summarise their agreement."""
    drift: bool = False
    """Also test every batch against the model's reference with the app's drift detectors."""
    batch_size: int = Field(16384, ge=1)
    """Rows that go through the preprocessor and the model at once (and one drift check each)."""
    num_actors: int | None = Field(None, ge=1)
    """Scoring actors, each of which loads the model once, then reads, scores and writes its share of
    the files. Default: the job's own process (the driver) when it would be done before a pool could
    start (batch/job.py: choose_placement), else as many as the cluster's CPUs allow (num_cpus_per_actor
    each), at most one per fragment of the input."""
    num_cpus_per_actor: float = Field(1.0, gt=0.0)
    """Logical CPUs each actor reserves: it reads, scores and writes (ONNX Runtime runs one thread
    per CPU reserved, as a replica does)."""
    num_gpus_per_actor: float = Field(0.0, ge=0.0)
    """GPUs per scoring actor (fractions share a GPU); ONNX Runtime then runs on CUDA."""
    pass_through: list[str] | None = None
    """Input columns copied to the output (ids, keys); default: every column the model does not consume."""
    files_per_round: int = Field(16, ge=1)
    """Input files committed together: a re-run skips the rounds already done."""
