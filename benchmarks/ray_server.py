"""The same model behind Ray Serve with ``@serve.batch``: the serving benchmark's third server.

One replica on a local Ray instance; each request (one ``.npy`` item or JSON ``{"input": ...}``)
joins a dynamic batch (``--max-batch``, ``--batch-wait-s``) as Ray Serve's documentation
recommends, and the answer is the same JSON as ``benchmarks/plain_server.py`` gives.
Its access log is off and its log level WARNING, in the proxy, the controller and the
replica: by default Ray Serve logs every request at INFO, on the same cores as the load,
and neither the daemon nor the plain endpoint logs per request. Needs
``pip install "ray[serve]"`` (2.40 or later, for ``LoggingConfig(enable_access_log=...)``).

    python benchmarks/ray_server.py --model builtin:cnn --port 8102
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import torch


def compact(data: Any) -> bytes:
    """JSON as the daemon's ``json_response`` writes it: compact, no NaN."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:cnn")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig
    from starlette.requests import Request
    from starlette.responses import Response

    quiet = LoggingConfig(enable_access_log=False, log_level="WARNING")

    @serve.deployment(max_ongoing_requests=4096, logging_config=quiet)
    class Model:
        def __init__(self, spec: str, threads: int) -> None:
            from ecoserve.models.loader import load_model
            from ecoserve.server.tensors import TensorSpec

            torch.set_num_threads(threads)
            self.model = load_model(spec)
            self.spec = TensorSpec(self.model.input_shape, self.model.input_dtype)

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.batch_wait_s)
        async def run(self, items: list[torch.Tensor]) -> list[bytes]:
            from ecoserve.server.tensors import to_jsonable

            out = self.model.batch_fn(torch.stack(items))
            name = self.model.name
            return [compact({"output": to_jsonable(row), "model": name}) for row in out]

        async def __call__(self, request: Request) -> Response:
            # The daemon's codec, as the plain endpoint has it: the same checks on each body.
            from ecoserve.server.tensors import (
                NPY_MEDIA_TYPES,
                InputError,
                json_items,
                load_npy,
                parse_json,
            )

            if request.method == "GET":  # readiness: answered once the deployment serves
                return Response(b'{"status":"ready"}', media_type="application/json")
            body = await request.body()
            kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            try:
                if kind in NPY_MEDIA_TYPES:
                    items = self.spec.split_items(load_npy(body))
                else:
                    items, _ = json_items(parse_json(body), self.spec)
            except InputError as exc:
                return Response(compact({"detail": str(exc)}), 422, media_type="application/json")
            if len(items) != 1:
                detail = {"detail": "send one item per request"}
                return Response(compact(detail), 422, media_type="application/json")
            return Response(await self.run(items[0]), media_type="application/json")

    ray.init(
        # a Ray of its own: on a shared box another one may be running, and joining it would
        # measure that cluster's load (and it refuses num_cpus)
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # the replica's lines would come back through this process too
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=quiet)
    serve.run(
        # @serve.deployment made Model a Deployment; mypy keeps the decorated class's own type.
        Model.options(  # type: ignore[attr-defined]
            ray_actor_options={"num_cpus": 0}
        ).bind(args.model, args.torch_threads),
        route_prefix="/v1/infer",
    )
    print(f"ray serve: {args.model} on http://127.0.0.1:{args.port}/v1/infer", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
