"""Triton's Python clients against ``ecoserve serve``: HTTP (binary tensors) and gRPC.

ecoserve serve --model builtin:cnn --grpc-port 8001
pip install 'tritonclient[http,grpc]'
python examples/triton_client.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()

    http = httpclient.InferenceServerClient(args.http)
    meta = http.get_model_metadata(args.model)
    item = [d for d in meta["inputs"][0]["shape"][1:]]
    x = np.random.default_rng(0).random((4, *item)).astype(np.float32)
    print("metadata:", meta["inputs"], meta["outputs"])

    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary tensor data
    out = http.infer(args.model, [tensor]).as_numpy("output")
    print("HTTP:", out.shape, out[0][:3])

    grpc = grpcclient.InferenceServerClient(args.grpc)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = grpc.infer(args.model, [tensor], model_version="1").as_numpy("output")
    print("gRPC:", out.shape, out[0][:3])
    stats = http.get_inference_statistics(args.model)["model_stats"][0]
    print(
        "served so far:", stats["inference_count"], "items in", stats["execution_count"], "batches"
    )


if __name__ == "__main__":
    main()
