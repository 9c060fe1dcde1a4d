"""KServe's Python clients (the ``kserve`` package) against ``ecoserve serve``: REST and gRPC.

ecoserve serve --model builtin:cnn --grpc-port 8001
pip install kserve
python examples/kserve_client.py --http http://127.0.0.1:8000 --grpc 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import numpy as np


async def main(base: str, grpc_address: str, model: str) -> None:
    # kserve parses the process's command line when imported (for its own model server):
    # import it only after this script's options are read, with them removed.
    sys.argv = sys.argv[:1]
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )

    x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        print("ready:", await rest.is_model_ready(base, model))
        for binary in (False, True):
            tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[tensor], request_id="demo")
            result = await rest.infer(base, request, model_name=model)
            print(f"REST ({'binary' if binary else 'JSON'}):", result.outputs[0].as_numpy()[0][:3])
    finally:
        await rest.close()
    client = InferenceGRPCClient(grpc_address)
    try:
        tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = await client.infer(InferRequest(model_name=model, infer_inputs=[tensor]))
        print("gRPC:", result.outputs[0].as_numpy()[0][:3])
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", default="http://127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()
    asyncio.run(main(args.http, args.grpc, args.model))
