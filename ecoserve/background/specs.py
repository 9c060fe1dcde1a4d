"""Resolving a ``--background SPEC`` into a job, with its options.

Specs, as ``ecoserve serve --background SPEC`` takes them:

- ``builtin:digits-finetune``: fine-tunes the built-in digits CNN (``digits_finetune``);
- ``builtin:batch-infer``: offline inference over a data set into a file (``batch_inference``);
- ``package.module:factory``: a class or factory called with the options, or a job object
  (e.g. one made with ``@background_job``).

Kept apart from the contract because it imports the shipped jobs and so the model code;
a face resolves the spec and hands the job to a driver.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from ecoserve.background.job import BackgroundJob, FunctionJob
from ecoserve.models.loader import resolve_entry_point

#: The members a job object must have (checked when a spec is loaded, so a wrong factory is
#: refused with its missing members named instead of failing at its first step).
JOB_MEMBERS = ("name", "step", "state_dict", "load_state_dict", "describe")


def _missing_members(obj: object) -> list[str]:
    return [m for m in JOB_MEMBERS if not hasattr(obj, m)]


def _builtin_factories() -> dict[str, Callable[..., BackgroundJob]]:
    """The shipped jobs, imported on demand (each pulls in its model and data code)."""
    from ecoserve.background.batch_inference import BatchInference
    from ecoserve.background.digits_finetune import DigitsFinetune

    return {"digits-finetune": DigitsFinetune, "batch-infer": BatchInference}


#: Names ``builtin:NAME`` accepts (kept beside the factories; checked by the tests).
BUILTIN_JOBS = ("digits-finetune", "batch-infer")


def _type_names(annotation: Any, default: Any) -> set[str]:
    """The type names of a parameter (annotations are strings under postponed evaluation)."""
    if annotation is inspect.Parameter.empty:
        if default in (None, inspect.Parameter.empty):
            return set()
        return {type(default).__name__}
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return {part.strip() for part in str(text).split("|")}


def _coerce(value: Any, names: set[str], key: str, spec: str) -> Any:
    """A string option from the command line or a config file, as the parameter's type."""
    if not isinstance(value, str) or not names or names & {"str", "Path", "Any"}:
        return value
    text = value.strip().lower()
    if "None" in names and text in ("", "none"):
        return None
    try:
        if "bool" in names:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if "int" in names:
            return int(text)
        if "float" in names:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
    except ValueError as exc:
        raise ValueError(f"option {key}={value!r} of {spec}: {exc}") from None
    return value


def _call_factory(factory: Callable[..., Any], spec: str, options: Mapping[str, Any]) -> Any:
    """Call ``factory(**options)``, naming an unknown option and the ones it takes."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    kwargs = dict(options)
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [
            n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"{spec} takes no option {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(accepted) or 'none'}"
            )
        for key in list(kwargs):
            p = params[key]
            kwargs[key] = _coerce(kwargs[key], _type_names(p.annotation, p.default), key, spec)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot start background job {spec}: {exc}") from exc


def load_job(spec: str, **options: Any) -> BackgroundJob:
    """The job a spec names, built with ``options``; ValueError says what is wrong and the fix.

    String option values (as a command line or a config file gives them) are converted to
    the type the job's parameter has, so numbers and ``true``/``false`` flags work as text.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            "background job spec is empty; use builtin:NAME "
            f"({', '.join(BUILTIN_JOBS)}) or package.module:factory"
        )
    spec = spec.strip()
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        factories = _builtin_factories()
        if name not in factories:
            raise ValueError(
                f"unknown built-in background job {name!r}; choose one of "
                f"{', '.join('builtin:' + n for n in BUILTIN_JOBS)}"
            )
        job = _call_factory(factories[name], spec, options)
    elif ":" in spec:
        obj = resolve_entry_point(spec)
        if isinstance(obj, FunctionJob):
            if options:
                raise ValueError(
                    f"{spec} is a job made with @background_job; it takes no options "
                    f"(got {', '.join(sorted(options))})"
                )
            job = obj.fresh()
        elif isinstance(obj, type) or (callable(obj) and _missing_members(obj)):
            job = _call_factory(obj, spec, options)
        elif not _missing_members(obj):
            if options:
                raise ValueError(f"{spec} is a job object; it takes no options")
            job = obj
        else:
            raise ValueError(f"{spec} is neither a background job nor a factory of one")
    else:
        raise ValueError(
            f"background job spec {spec!r} not understood; use builtin:NAME "
            f"({', '.join(BUILTIN_JOBS)}) or package.module:factory"
        )
    missing = _missing_members(job)
    if missing:
        raise ValueError(
            f"{spec} gave {type(job).__name__}, which is not a background job: it lacks "
            f"{', '.join(missing)} (see ecoserve.background.BackgroundJob)"
        )
    if not isinstance(job.name, str) or not job.name:
        raise ValueError(f"{spec} gave a job whose name is not a non-empty string")
    return job
