"""The ASGI application behind ``revorch serve``: one Starlette app, its routes assembled here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from revorch import settings
from revorch.server.webhooks import DEFAULT_MAX_BODY_BYTES, Receiver, ReceiverSettings
from revorch.sources.hubspot import config as hubspot_config


def settings_from_environment() -> ReceiverSettings:
    """The receivers' settings from the environment (docs/sources/webhooks.md)."""
    return ReceiverSettings(
        landing=settings.landing_path(),
        hubspot_client_secret=settings.hubspot_client_secret(),
        hubspot_own_writes=hubspot_config.own_writes_path(),
        source_secrets=settings.webhook_source_secrets(),
        public_url=settings.webhook_public_url(),
        max_body_bytes=settings.webhook_max_body_bytes(DEFAULT_MAX_BODY_BYTES),
    )


def create_app(
    config: ReceiverSettings | None = None, *, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The service: ``/webhooks/hubspot``, ``/webhooks/{source}``, ``/health``, then
    ``extra_routes``. ``config`` defaults to what the environment says."""
    receiver = Receiver(config or settings_from_environment())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await receiver.writer.start()
        try:
            yield
        finally:
            await receiver.writer.stop()  # what was accepted is written before the process ends

    routes: list[BaseRoute] = [
        *receiver.routes(),
        # Other parts of the service mount their route lists here (the approvals inbox,
        # revorch/server/inbox.py, passes its routes through `extra_routes`).
        *extra_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.receiver = receiver
    return app


def create_service() -> Starlette:
    """The whole service as `revorch serve` runs it, from the environment: the webhook
    receivers and the approvals inbox (each worker process of ``--workers`` builds its own)."""
    from revorch.server.inbox import InboxSettings, inbox_routes

    return create_app(extra_routes=inbox_routes(InboxSettings.from_env()))
