"""The ingress: the Open Inference Protocol over HTTP (FastAPI) and gRPC (Serve's gRPC proxy).
A thin shell: each route parses what HTTP carries and calls the replica's Gateway (serve_app/gateway.py)."""

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from serve_app import __version__
from serve_app.config import GraphArgs
from serve_app.deployments.handles import RAY_ERRORS, DeploymentClient, client_error_of, pipeline_endpoints
from serve_app.deployments.logs import replica_logging
from serve_app.deployments.metrics import RouterMetrics
from serve_app.deployments.redeploy import redeploy
from serve_app.deployments.statistics import BoardClient
from serve_app.experiments.traffic import ROUTING_KEY_HEADER
from serve_app.gateway import Gateway
from serve_app.messages import Pipeline
from serve_app.protocol import http, openapi
from serve_app.protocol.extensions import CONFIG_SOURCES, EXTENSIONS, TritonExtensions
from serve_app.protocol.generated import grpc_predict_v2_pb2 as pb
from serve_app.protocol.grpc_service import InferenceService
from serve_app.protocol.management import LOAD_PARAMETERS, UNLOAD_PARAMETERS
from serve_app.protocol.rest import binary_outputs, parse_infer_request, render_infer_response
from serve_app.statistics import StatisticsRecorder

logger = logging.getLogger("ray.serve")
STATUS_PAGE = Path(__file__).parents[1] / "static" / "dashboard.html"

app = FastAPI(
    title="serve-app",
    version=__version__,
    description="The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.",
)
http.answer_errors(app, client_error_of, also=RAY_ERRORS)
openapi.describe_requests(app)


@serve.deployment
@serve.ingress(app)
class Router:
    async def __init__(
        self,
        settings: dict,
        pipelines: list[Pipeline],
        experiments: DeploymentHandle | None = None,
        initial_traffic: dict[str, dict] | None = None,
        drift: DeploymentHandle | None = None,
        app_args: dict | None = None,
        config_version: str | None = None,
        statistics: str | None = None,
    ):
        """pipelines: one per served version;
        experiments: the experiment store, for the models in initial_traffic;
        drift: the drift monitor, for the models in settings.drift;
        app_args: the application's args as the graph builder resolved them, to deploy it again
        changed (load, unload, traffic); config_version: the version of the args it was given, which
        a change must still find deployed (compare-and-set); statistics: the key of this deployment's
        statistics board."""
        replica_logging()
        settings = GraphArgs.model_validate(settings)
        recorder = StatisticsRecorder("router")
        self.gateway = Gateway(
            settings,
            pipeline_endpoints(settings, pipelines, recorder),
            RouterMetrics(),
            experiments=DeploymentClient(experiments) if experiments is not None else None,
            initial_traffic=initial_traffic,
            drift=DeploymentClient(drift) if drift is not None else None,
            app_args=app_args,
            extensions=EXTENSIONS,
            statistics=BoardClient(statistics) if statistics is not None else None,
            recorder=recorder,
        )
        self.config_version = config_version
        self.triton = TritonExtensions(self.gateway)
        self.grpc = InferenceService(self.gateway, client_error_of, self._load, self._unload)
        self.limit = settings.max_request_bytes
        self.parsing = http.ParsingBudget(settings.max_parsing_bytes)
        self.status_page = STATUS_PAGE.read_text()
        await self.gateway.start()

    async def __del__(self):
        await self.gateway.close()

    async def start_time(self) -> float:
        """When this replica started (a handle call: a redeploy waits for a router newer than itself)."""
        return self.gateway.started_at

    # -- REST: inference (first: routes are matched in order, and this is the hot one) ---------

    @app.post("/v2/models/{model}/infer", **openapi.INFER_ROUTE)
    async def infer(self, model: str, request: Request) -> Response:
        return await self._infer(model, None, request)

    @app.post("/v2/models/{model}/versions/{version}/infer", **openapi.INFER_ROUTE)
    async def version_infer(self, model: str, version: str, request: Request) -> Response:
        return await self._infer(model, version, request)

    async def _infer(self, model: str, version: str | None, request: Request) -> Response:
        self.gateway.dataplane.endpoint(model, version)  # an unknown model is a 404 before the body is read
        with self.parsing.reserve(http.body_size(request, self.limit)):
            inference = parse_infer_request(await http.read_body(request, self.limit), http.header_length(request))
        response = await self.gateway.serve(model, version, inference, request.headers.get(ROUTING_KEY_HEADER))
        content, header_length = render_infer_response(response, binary_outputs(inference, list(response.outputs)))
        headers = {"x-model-version": response.model_version, "x-serve-arm": response.parameters["arm"]}
        if header_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[http.HEADER_LENGTH] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=headers)

    # -- REST: health and metadata -----------------------------------------------------------

    @app.get("/v2/health/live", response_model=openapi.Live)
    async def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=openapi.Ready, responses={400: {"model": openapi.Ready}})
    async def ready(self) -> JSONResponse:
        return http.ready_response(await self.gateway.dataplane.server_ready())

    @app.get("/health", response_model=openapi.Health)
    async def health(self) -> dict:
        return {**self.gateway.health(), "body_parsing": self.parsing.stats()}

    @app.get("/v2", response_model=openapi.ServerMetadata)
    async def server_metadata(self) -> dict:
        return self.gateway.dataplane.server_metadata()

    @app.get("/v2/models/stats", response_model=openapi.Statistics)
    async def all_statistics(self) -> dict:
        """Triton's statistics extension: every served version, summed over the application's replicas."""
        return await self.triton.statistics(None, None)

    @app.get("/v2/models/{model}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def model_metadata(self, model: str) -> dict:
        return await self.gateway.metadata(model, None)

    @app.get("/v2/models/{model}/versions/{version}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    async def version_metadata(self, model: str, version: str) -> dict:
        return await self.gateway.metadata(model, version)

    @app.get("/v2/models/{model}/config", responses=openapi.ERRORS)
    async def model_config(self, model: str, source: str = "triton") -> dict:
        """Triton's model configuration (what clients send and get); `?source=repository`: config.yaml."""
        return self.triton.model_config(model, None, http.choice("source", source, CONFIG_SOURCES))

    @app.get("/v2/models/{model}/versions/{version}/config", responses=openapi.ERRORS)
    async def version_config(self, model: str, version: str, source: str = "triton") -> dict:
        return self.triton.model_config(model, version, http.choice("source", source, CONFIG_SOURCES))

    @app.get("/v2/models/{model}/stats", response_model=openapi.Statistics, responses=openapi.ERRORS)
    async def model_statistics(self, model: str) -> dict:
        return await self.triton.statistics(model, None)

    @app.get("/v2/models/{model}/versions/{version}/stats", response_model=openapi.Statistics, responses=openapi.ERRORS)
    async def version_statistics(self, model: str, version: str) -> dict:
        return await self.triton.statistics(model, version)

    @app.get("/v2/models/{model}/ready", response_model=openapi.Ready, responses=openapi.ERRORS)
    async def model_ready(self, model: str) -> JSONResponse:
        return http.ready_response(await self.gateway.dataplane.model_ready(model))

    @app.get("/v2/models/{model}/versions/{version}/ready", response_model=openapi.Ready, responses=openapi.ERRORS)
    async def version_ready(self, model: str, version: str) -> JSONResponse:
        return http.ready_response(await self.gateway.dataplane.model_ready(model, version))

    # -- REST: the status page, drift, the repository ------------------------------------------

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard(self) -> HTMLResponse:
        """Charts of traffic, the experiment, latency, batching, drift and shadows; refreshes itself."""
        return HTMLResponse(self.status_page)

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data(self) -> dict:
        return await self.gateway.status_page_data()

    @app.get("/v2/models/{model}/drift", responses=openapi.ERRORS)
    async def drift_report(self, model: str) -> dict:
        return await self.gateway.drift_report(model)

    @app.post("/v2/repository/index", responses=openapi.ERRORS)
    async def repository_index(self, request: Request) -> list[dict]:
        return self.triton.repository_index(http.index_filter(await http.read_body(request, self.limit)))

    # -- REST: management (the admin token) -----------------------------------------------------

    @app.post("/v2/repository/models/{model}/load", responses=openapi.CONTROL_ERRORS)
    async def load_model(self, model: str, request: Request) -> JSONResponse:
        """Triton's load: the versions the model's policy selects now, or `parameters.version`."""
        who = http.authorize(request, f"load {model}")
        body = await http.read_body(request, self.limit)
        return http.change_answer(
            await self._load(model, http.control_parameters(body, LOAD_PARAMETERS).get("version"), who)
        )

    @app.post("/v2/repository/models/{model}/unload", responses=openapi.CONTROL_ERRORS)
    async def unload_model(self, model: str, request: Request) -> JSONResponse:
        """Triton's unload: the model, or only `parameters.version` of it."""
        who = http.authorize(request, f"unload {model}")
        body = await http.read_body(request, self.limit)
        version = http.control_parameters(body, UNLOAD_PARAMETERS).get("version")
        return http.change_answer(await self._unload(model, version, who))

    @app.put("/v2/models/{model}/experiment/traffic", responses=openapi.CONTROL_ERRORS)
    async def set_traffic(self, model: str, request: Request) -> JSONResponse:
        """Start the model's experiment anew with this traffic (champion, challenger and weight,
        shadows), loading the versions it names."""
        who = http.authorize(request, f"set the traffic of {model}")
        traffic = http.traffic_body(await http.read_body(request, self.limit))
        args = self.gateway.control().set_traffic(model, traffic)
        action = f"set the traffic of {model}"
        return http.change_answer(await self._redeploy(args, action, who, {model: args["experiments"][model]}))

    async def _load(self, model: str, version: int | None, who: str) -> dict:
        """Triton's load (REST and gRPC): the versions the model's policy selects now, or `version`."""
        action = f"load {model}" + (f" v{version}" if version else "")
        args = self.gateway.control().load(model, version)
        if args is None:
            return {"action": action, "state": "READY", "added": [], "removed": []}
        return await self._redeploy(args, action, who)

    async def _unload(self, model: str, version: int | None, who: str) -> dict:
        args = self.gateway.control().unload(model, version)
        return await self._redeploy(args, f"unload {model}" + (f" v{version}" if version else ""), who)

    async def _redeploy(self, args: dict, action: str, who: str, experiments: dict | None = None) -> dict:
        logger.info("%s by %s: deploying the application again with changed args", action, who)
        return await redeploy(args, action, experiments or {}, self.config_version)

    # -- REST: experiments ---------------------------------------------------------------------

    @app.post("/v2/models/{model}/feedback", responses=openapi.ERRORS)
    async def feedback(self, model: str, request: Request) -> dict:
        store = self.gateway.experiment_store(model)
        document = http.feedback_body(await http.read_body(request, self.limit))
        return await store.feedback(model, document.get("id"), document.get("reward"), document.get("label"))

    @app.get("/v2/models/{model}/experiment", responses=openapi.ERRORS)
    async def experiment(self, model: str) -> dict:
        return await self.gateway.experiment_store(model).summary(model)

    @app.post("/v2/models/{model}/experiment/promote", responses=openapi.ERRORS | openapi.AUTH_ERRORS)
    async def promote(self, model: str, request: Request) -> dict:
        who = http.authorize(request, f"promote {model}")
        reason = http.reason(await http.read_body(request, self.limit))
        return await self.gateway.experiment_store(model).promote(model, reason, who)

    @app.post("/v2/models/{model}/experiment/rollback", responses=openapi.ERRORS | openapi.AUTH_ERRORS)
    async def rollback(self, model: str, request: Request) -> dict:
        who = http.authorize(request, f"roll back {model}")
        reason = http.reason(await http.read_body(request, self.limit))
        return await self.gateway.experiment_store(model).rollback(model, reason, who)

    # -- gRPC: inference.GRPCInferenceService, called by name through Serve's gRPC proxy -------

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return await self.grpc.server_live()

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return await self.grpc.server_ready()

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return await self.grpc.server_metadata()

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return await self.grpc.model_ready(request)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.model_metadata(request, grpc_context)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.model_infer(request, grpc_context)

    async def ModelConfig(self, request: pb.ModelConfigRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.model_config(request, grpc_context)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.model_statistics(request, grpc_context)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.repository_index(request, grpc_context)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.repository_model_load(request, grpc_context)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, grpc_context: RayServegRPCContext):
        return await self.grpc.repository_model_unload(request, grpc_context)
