"""Every model one daemon serves, under the protocol's names, and what each caller may see.

The HTTP and gRPC front ends look models up here, never in the service: a name the caller
may not see (another tenant's model) answers exactly as a name that does not exist, so
the index, metadata, inference, statistics, load and unload reveal nothing of it. Load and
unload go to the repository's ``ModelControl`` where there is one; a daemon of one
``--model`` refuses them, as it serves that model for life.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ecoserve.server.oip_model import OipModel, bad_request, not_found
from ecoserve.server.service import InferenceService, ServiceError


class Caller(Protocol):
    """Whoever a request's credentials name (a tenant)."""

    @property
    def name(self) -> str: ...

    def may_use(self, model: str) -> bool: ...


#: Who is asking: a tenant, or None where the daemon has no tenants (every model visible).
Visible = Caller | None


class Authenticator(Protocol):
    """Turns a request's ``Authorization`` header into its caller (None: not a caller)."""

    def authenticate(self, authorization: str | None) -> Caller | None: ...


def unauthorized() -> ServiceError:
    """401 with the challenge clients expect; never says which part of a token was wrong."""
    return ServiceError(
        401,
        "a tenant's token is needed: send Authorization: Bearer <token>",
        "unauthorized",
        {"WWW-Authenticate": "Bearer"},
    )


def visibility(auth: Authenticator | None, authorization: str | None) -> Visible:
    """Who a request is: None without tenants (it sees everything), else its tenant."""
    if auth is None:
        return None
    caller = auth.authenticate(authorization)
    if caller is None:
        raise unauthorized()
    return caller


class ModelControl(Protocol):
    """Loads and unloads a repository's models while the daemon serves (the server's side)."""

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


class OipCatalogue:
    """The served models by name; lookups filtered by what the caller may see."""

    def __init__(
        self,
        service: InferenceService,
        models: Iterable[OipModel] | None = None,
        control: ModelControl | None = None,
    ) -> None:
        self.service = service
        chosen = list(models) if models is not None else [OipModel(service)]
        self.models = {m.name: m for m in chosen}
        self.control = control

    @property
    def ready(self) -> bool:
        return self.service.ready

    def first(self) -> OipModel:
        """The default model (the only one of a ``--model`` daemon)."""
        return self.models[self.service.default.name]

    def _visible(self, visible: Visible) -> list[OipModel]:
        return [m for n, m in sorted(self.models.items()) if visible is None or visible.may_use(n)]

    def get(self, name: str, version: str | None = None, visible: Visible = None) -> OipModel:
        """The model called ``name``; 404 in Triton's words when absent or not the caller's.

        Only the served name counts: the ``--model`` spec (``builtin:cnn``) is not a model
        name, and answering to it would serve a name no client can discover.
        """
        model = self.models.get(name)
        if model is None or (visible is not None and not visible.may_use(name)):
            names = ", ".join(repr(m.name) for m in self._visible(visible)) or "none you may use"
            raise not_found(
                f"Request for unknown model: {name!r} is not found (this daemon serves {names})"
            )
        model.check_version(version)
        return model

    def repository_index(self, visible: Visible = None) -> list[dict[str, str]]:
        return [entry for m in self._visible(visible) for entry in m.repository_index()]

    def model_statistics(self, visible: Visible = None) -> dict[str, Any]:
        stats = [s for m in self._visible(visible) for s in m.model_statistics()["model_stats"]]
        return {"model_stats": stats}

    async def load(self, name: str, visible: Visible = None) -> None:
        """Load a model of the repository (a no-op when loaded); refusals as ServiceError."""
        if self.control is None:
            raise self._refuse("load", name)
        self.get(name, None, visible)
        await self.control.load(name)

    async def unload(self, name: str, visible: Visible = None) -> None:
        if self.control is None:
            raise self._refuse("unload", name)
        self.get(name, None, visible)
        await self.control.unload(name)

    def _refuse(self, action: str, name: str) -> ServiceError:
        """Load and unload, over HTTP and gRPC alike: one ``--model`` is served for life."""
        if action == "load":
            reason = (
                f"cannot load {name!r}: ecoserve serves the one model given at start "
                "(restart with --model to change it, or serve a --model-repository)"
            )
        else:
            reason = f"cannot unload {name!r}: stop the daemon to stop serving its model"
        return bad_request(reason)
