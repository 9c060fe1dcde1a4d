"""Send one request to a running ``ecoserve serve`` as JSON, then as a binary .npy tensor.

ecoserve serve --model builtin:cnn &
python examples/client_request.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import io

import httpx
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=30) as client:
        meta = client.get("/v1/status").json()
        shape = [int(x) for x in meta["input"].split("[", 1)[1].split("]", 1)[0].split(",")]
        item = np.random.default_rng(0).random(shape, dtype=np.float32)

        r = client.post("/v1/infer", json={"input": item.tolist()})
        r.raise_for_status()
        print("JSON:", r.json()["output"], f"({r.json()['latency_s'] * 1e3:.1f} ms)")

        buf = io.BytesIO()
        np.save(buf, np.stack([item, item]))  # two items in one body
        r = client.post(
            "/v1/infer",
            content=buf.getvalue(),
            headers={
                "Content-Type": "application/octet-stream",
                "Accept": "application/octet-stream",
            },
        )
        r.raise_for_status()
        out = np.load(io.BytesIO(r.content), allow_pickle=False)
        print(".npy:", out.shape, out.dtype, "latency", r.headers["X-Ecoserve-Latency-S"], "s")


if __name__ == "__main__":
    main()
