"""``builtin:batch-infer``: offline inference over a data set in a serving board's troughs.

Batch work that can wait for idle time: run a model (any ``--model`` spec) over every item of
a data set and write one JSON line per item to an output file. Sources: ``digits-test`` (the
450 held-out digits images, labelled, so the job also reports accuracy), a ``.npy`` file (its
rows are the items) or a folder of ``.npy`` files (sorted by name; each holds one item, or a
stack of items along its first axis when it has one more axis than the model's input). Items
are model inputs as they are, cast to the model's input dtype.

Its progress is the number of items done, and nothing is done twice or skipped across a stop:
the output is appended as steps run, and the job's state records how many items are done and
how many bytes of output hold them (flushed to disk before the state is handed out). A resumed
job cuts the output back to that length, dropping lines written after the checkpoint, and
carries on from the next item.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ecoserve.background.job import StepResult
from ecoserve.models.loader import LoadedModel, load_model

DIGITS_TEST = "digits-test"


@dataclass(frozen=True)
class _Item:
    """Where one item lives: a file and a row of it (None: the whole file is the item)."""

    file: Path | None
    row: int | None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class BatchInference:
    """Run ``model`` over ``source`` into ``output`` (JSON lines), a micro-batch per step.

    ``loader_workers``: threads that read ``.npy`` files for a step (0 reads them in the
    stepping thread); a knob the background slot may change between steps. ``overwrite``:
    a fresh start may replace an existing, non-empty ``output`` (by default it refuses, so a
    mistyped path cannot destroy a file).
    """

    def __init__(
        self,
        output: str | Path | None = None,
        source: str = DIGITS_TEST,
        model: str = "builtin:digits-small",
        loader_workers: int = 0,
        overwrite: bool = False,
    ) -> None:
        if output is None or not str(output).strip():
            raise ValueError("batch-infer needs output=PATH, the JSON-lines file it writes")
        self.output = Path(output)
        if self.output.is_dir():
            raise ValueError(f"output={self.output} is a folder; give a file path")
        self.source = str(source)
        self.model_spec = model
        self.loader_workers = loader_workers
        self.overwrite = bool(overwrite)
        self.model: LoadedModel = load_model(model)
        self._items, self._data, self._labels = self._index(self.source)
        self.fingerprint = hashlib.sha256(
            "\n".join(f"{i.file}|{i.row}" for i in self._items).encode()
            + self.source.encode()
            + model.encode()
        ).hexdigest()[:16]
        self.items_done = 0
        self.output_bytes = 0
        self.correct = 0
        self._resumed = False
        self._out: IO[bytes] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @property
    def name(self) -> str:
        return "batch-infer"

    @property
    def total(self) -> int:
        return len(self._items)

    @property
    def loader_workers(self) -> int:
        return self._loader_workers

    @loader_workers.setter
    def loader_workers(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"loader_workers={workers!r}: must be a whole number >= 0")
        self._loader_workers = workers

    def _index(self, source: str) -> tuple[list[_Item], torch.Tensor | None, torch.Tensor | None]:
        """The items of ``source`` in order (file shapes are read from headers only)."""
        if source == DIGITS_TEST:
            from ecoserve.models.digits import load_digits_split

            split = load_digits_split()
            rows = [_Item(None, r) for r in range(len(split.y_test))]
            return rows, split.x_test, split.y_test
        path = Path(source)
        if path.is_file() and path.suffix == ".npy":
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
            if not files:
                raise ValueError(f"source folder {path} holds no .npy files")
        else:
            raise ValueError(
                f"source={source!r} is neither {DIGITS_TEST!r}, a .npy file nor a folder of them"
            )
        shape = self.model.input_shape
        items: list[_Item] = []
        for f in files:
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {f} as a .npy array: {exc}") from exc
            stacked = path.is_file() or (shape is not None and arr.ndim == len(shape) + 1)
            if stacked and arr.ndim >= 1:
                items.extend(_Item(f, r) for r in range(arr.shape[0]))
            else:
                items.append(_Item(f, None))
        return items, None, None

    def _read_file(self, path: Path) -> np.ndarray:
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def _load(self, items: list[_Item], first: int) -> list[torch.Tensor]:
        """The tensors of ``items`` (``first`` is the index of ``items[0]`` in the source)."""
        if self._data is not None:
            return list(self._data[first : first + len(items)])
        files = list(dict.fromkeys(i.file for i in items if i.file is not None))
        if self._loader_workers > 0:
            if self._pool is None or self._pool_size != self._loader_workers:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(self._loader_workers, "batch-infer-loader")
                self._pool_size = self._loader_workers
            arrays = dict(zip(files, self._pool.map(self._read_file, files)))
        else:
            arrays = {f: self._read_file(f) for f in files}
        out = []
        for item in items:
            assert item.file is not None
            arr = arrays[item.file]
            out.append(torch.from_numpy(np.array(arr if item.row is None else arr[item.row])))
        return out

    def _open_output(self) -> IO[bytes]:
        """The output, cut back to the bytes the last state accounted for."""
        if self._out is not None:
            return self._out
        exists = self.output.exists()
        if exists and not self._resumed and self.output.stat().st_size > 0 and not self.overwrite:
            raise ValueError(
                f"output {self.output} already exists; remove it, choose another output, or "
                "pass overwrite=true (a resumed job continues it by itself)"
            )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.output, "r+b" if exists else "wb")  # kept open across steps
        fh.truncate(self.output_bytes)
        fh.seek(self.output_bytes)
        self._out = fh
        return fh

    def step(self, micro_batch: int) -> StepResult:
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: must be a whole number >= 1")
        if self.items_done >= self.total:
            return StepResult(items=0, done=True)
        out = self._open_output()
        first = self.items_done
        chosen = self._items[first : first + micro_batch]
        inputs = self._load(chosen, first)
        if self.model.preprocess is not None:
            inputs = [self.model.preprocess(x) for x in inputs]
        batch = torch.stack(inputs).to(self.model.input_dtype)
        outputs = self.model.batch_fn(batch)
        if len(outputs) != len(chosen):
            raise ValueError(f"the model gave {len(outputs)} outputs for {len(chosen)} inputs")
        lines = []
        correct = 0
        for k, (item, y) in enumerate(zip(chosen, outputs)):
            record: dict[str, Any] = {"item": first + k}
            if item.file is not None:
                record["file"] = item.file.name
            if item.row is not None:
                record["row"] = item.row
            if isinstance(y, torch.Tensor) and y.ndim == 1 and y.numel() > 1:
                record["prediction"] = int(y.argmax())
                if self._labels is not None:
                    label = int(self._labels[first + k])
                    record["label"] = label
                    correct += int(record["prediction"] == label)
            post = self.model.postprocess(y) if self.model.postprocess is not None else y
            record["output"] = _jsonable(post)
            lines.append(json.dumps(record, default=str))
        data = ("\n".join(lines) + "\n").encode()
        out.write(data)
        self.items_done += len(chosen)
        self.output_bytes += len(data)
        self.correct += correct
        done = self.items_done >= self.total
        if done:  # the output is complete: make it durable and let it go
            self._sync_output()
            self.close()
        metric = {"progress": self.items_done / self.total}
        if self._labels is not None:
            metric["accuracy"] = self.correct / self.items_done
        return StepResult(items=len(chosen), metric=metric, done=done)

    def state_dict(self) -> dict[str, Any]:
        """Progress, after making the output it counts durable (so the two always agree)."""
        self._sync_output()
        return {
            "fingerprint": self.fingerprint,
            "source": self.source,
            "total": self.total,
            "items_done": self.items_done,
            "output_bytes": self.output_bytes,
            "correct": self.correct,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after ``state``; ValueError if it is another data set's or the output lost
        lines the state counts."""
        try:
            fingerprint = str(state["fingerprint"])
            done, size = int(state["items_done"]), int(state["output_bytes"])
            correct = int(state.get("correct", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a batch-infer state: {exc}") from exc
        if fingerprint != self.fingerprint:
            raise ValueError(
                f"the checkpoint is of a run over {state.get('source')!r} "
                f"({state.get('total')} items), not of this one over {self.source!r} with "
                f"model {self.model_spec!r} ({self.total} items)"
            )
        if not 0 <= done <= self.total or size < 0:
            raise ValueError(f"items_done={done} is out of range for {self.total} items")
        have = self.output.stat().st_size if self.output.exists() else 0
        if have < size:
            raise ValueError(
                f"output {self.output} has {have} bytes but the checkpoint counts {size}: it was "
                "changed outside the job; restore it or remove the checkpoint to start over"
            )
        if self._out is not None:
            self._out.close()
            self._out = None
        self.items_done, self.output_bytes, self.correct = done, size, correct
        self._resumed = True

    def _sync_output(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())

    def close(self) -> None:
        """Flush and close the output and stop the loader threads (the runner's stop)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {
            "job": self.name,
            "source": self.source,
            "model": self.model_spec,
            "output": str(self.output),
            "items_done": self.items_done,
            "items_total": self.total,
            "loader_workers": self._loader_workers,
            "knobs": {"micro_batch": [1, max(1, self.total)], "loader_workers": [0, 8]},
        }
