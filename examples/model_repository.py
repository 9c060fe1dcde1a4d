"""Write a model repository in Triton's layout from ecoserve's built-in models.

    python examples/model_repository.py models/
    ecoserve serve --model-repository models/

``a_cnn`` is a TorchScript model (platform pytorch_libtorch, tensors INPUT__0 / OUTPUT__0,
max_batch_size 8) and ``b_digits`` an ONNX model (platform onnxruntime_onnx, tensors
``input`` / ``output``, max_batch_size 16). Nothing is downloaded: the weights are the
package's own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ecoserve.models.repository_export import write_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the repository to write (created if absent)")
    args = ap.parse_args()
    for folder in (
        write_model(args.folder, "a_cnn", "cnn", "pytorch", max_batch_size=8),
        write_model(args.folder, "b_digits", "digits-small", "onnxruntime", max_batch_size=16),
    ):
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
