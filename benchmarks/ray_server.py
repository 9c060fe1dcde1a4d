"""The same model behind Ray Serve with ``@serve.batch``: the serving benchmark's third server.

One replica on a local Ray instance; each request (one ``.npy`` item or JSON ``{"input": ...}``)
joins a dynamic batch (``--max-batch``, ``--batch-wait-s``) as Ray Serve's documentation
recommends, and the answer is the same JSON as ``benchmarks/plain_server.py`` gives.
Needs ``pip install "ray[serve]"``.

    python benchmarks/ray_server.py --model builtin:cnn --port 8102
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch


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
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=4096)
    class Model:
        def __init__(self, spec: str, threads: int) -> None:
            from ecoserve.models.loader import load_model

            torch.set_num_threads(threads)
            self.model = load_model(spec)

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.batch_wait_s)
        async def run(self, items: list[torch.Tensor]) -> list[bytes]:
            out = self.model.batch_fn(torch.stack(items))
            name = self.model.name
            return [json.dumps({"output": row.tolist(), "model": name}).encode() for row in out]

        async def __call__(self, request: Request) -> Response:
            if request.method == "GET":  # readiness: answered once the deployment serves
                return Response(b'{"status":"ready"}', media_type="application/json")
            body = await request.body()
            if request.headers.get("content-type", "").startswith("application/octet-stream"):
                item = torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
            else:
                item = torch.tensor(json.loads(body)["input"], dtype=self.model.input_dtype)
            return Response(await self.run(item), media_type="application/json")

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
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
