"""A plain FastAPI endpoint that runs the model once per request: the benchmark's reference.

No batching, no tuning: each request's body (JSON ``{"input": ...}`` or one ``.npy`` item) is
decoded and the model called with a batch of one in a worker thread, which is what a
hand-written endpoint usually does. It gets the same basic care as the daemon, so that the
comparison measures batching and tuning rather than housekeeping:

- the same codec: bodies are decoded and checked by ``ecoserve.server.tensors`` and answers
  encoded as the daemon's ``json_response`` does them (compact standard-library JSON);
- the same collector treatment: everything loaded at startup is frozen out of the garbage
  collector's sight (``gc.collect(); gc.freeze()``), as the daemon's lifespan does, so a full
  collection does not stop every request in flight for about 100 ms.

    python benchmarks/plain_server.py --model builtin:cnn --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from ecoserve.models.loader import load_model
from ecoserve.server.responses import json_response
from ecoserve.server.tensors import (
    NPY_MEDIA_TYPES,
    InputError,
    TensorSpec,
    json_items,
    load_npy,
    parse_json,
    to_jsonable,
)


def create_plain_app(model_spec: str) -> FastAPI:
    model = load_model(model_spec)
    spec = TensorSpec(model.input_shape, model.input_dtype)
    lock = asyncio.Lock()  # one model call at a time, as on a single accelerator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gc.collect()
        gc.freeze()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        body = await request.body()
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            if kind in NPY_MEDIA_TYPES:
                items = spec.split_items(load_npy(body))
            else:
                items, _ = json_items(parse_json(body), spec)
        except InputError as exc:
            return json_response({"detail": str(exc)}, 422)
        if len(items) != 1:
            return json_response({"detail": "send one item per request"}, 422)
        async with lock:
            out = await asyncio.to_thread(model.batch_fn, items[0].unsqueeze(0))
        return json_response({"output": to_jsonable(out[0]), "model": model.name})

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:cnn")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    app = create_plain_app(args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
