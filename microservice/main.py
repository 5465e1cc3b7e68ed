"""The credit-score microservice: one app, two roles (`SERVICE_ROLE=live|queue`).

Run from the repository root:
`SERVICE_ROLE=queue ... .venv/bin/uvicorn microservice.main:app --port 8081`.
"""

from __future__ import annotations

from fastapi import FastAPI

from microprocess.service.asgi import BodyLimit
from microprocess.service.fastapi_routes import install_contract_errors
from microservice.api_key import install_api_keys
from microservice.chaos import ChaosMiddleware, ChaosMonkey, load_chaos
from microservice.declared import JOB as CREDIT_SCORES
from microservice.errors import install_error_handlers
from microservice.routers import chaos, companies, health, reduce, tasks
from microservice.security import install_verifier
from microservice.settings import ServiceRole, Settings, SettingsError, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Assemble the app for the settings' role (the environment's settings by default).

    Settings passed in explicitly also become the routes' settings (a dependency override).
    `/docs`, `/redoc` and `/openapi.json` exist only with `SERVICE_DOCS=true`.
    """
    resolved = settings or get_settings()
    docs = resolved.service_docs
    app = FastAPI(
        title=f"{resolved.host_name}: credit scores",
        description="Credit scores of companies: a live API (send the key in the X-Api-Key header), and the "
        f"queue clone that runs the `{CREDIT_SCORES.name}` job's tasks, pushed and signed by the forwarder.",
        version="1.0.0",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    install_contract_errors(app)
    install_verifier(app, resolved)
    app.include_router(health.router)
    if resolved.service_role is ServiceRole.LIVE:
        install_api_keys(app, resolved)
        app.include_router(companies.router)
    else:
        app.include_router(tasks.router)
        app.include_router(reduce.router)
    try:
        chaos_config = load_chaos(resolved.microprocess_chaos)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if chaos_config is not None:
        app.state.chaos = ChaosMonkey(chaos_config)
        app.add_middleware(ChaosMiddleware, monkey=app.state.chaos, task_path=CREDIT_SCORES.task_path)
        app.include_router(chaos.router)
    # Outermost (added last): a body over the contract's limit is refused before any middleware reads it.
    app.add_middleware(BodyLimit)
    return app


def __getattr__(name: str) -> FastAPI:
    # `app = create_app()`, built on first access (uvicorn's `microservice.main:app`), so that
    # importing this module for `create_app` (tests, tools) needs no environment.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
