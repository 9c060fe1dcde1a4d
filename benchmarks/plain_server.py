"""A plain FastAPI endpoint that runs the model once per request: the benchmark's reference.

No batching, no tuning: each request's body (JSON ``{"input": ...}`` or one ``.npy`` item) is
decoded and the model called with a batch of one in a worker thread, which is what a
hand-written endpoint usually does.

    python benchmarks/plain_server.py --model builtin:cnn --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from ecoserve.models.loader import load_model


def create_plain_app(model_spec: str) -> FastAPI:
    model = load_model(model_spec)
    lock = asyncio.Lock()  # one model call at a time, as on a single accelerator
    app = FastAPI()

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            item = torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
        else:
            item = torch.tensor(json.loads(body)["input"], dtype=model.input_dtype)
        async with lock:
            out = await asyncio.to_thread(model.batch_fn, item.unsqueeze(0))
        answer = json.dumps({"output": out[0].tolist(), "model": model.name})
        return Response(answer, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:cnn")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    uvicorn.run(create_plain_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
