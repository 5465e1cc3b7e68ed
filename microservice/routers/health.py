"""`GET /healthz`: cheap liveness for the load balancer and the container HEALTHCHECK (no AWS calls)."""

from __future__ import annotations

from fastapi import APIRouter

from microservice.dependencies import SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(settings: SettingsDep) -> dict[str, str]:
    """`{"status": "ok", "role": "live"|"queue", "service": "scores-live"|"scores-queue"}`."""
    return {"status": "ok", "role": str(settings.service_role), "service": settings.host_name}
