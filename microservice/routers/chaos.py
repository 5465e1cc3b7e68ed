"""`GET /_chaos/stats`: what the chaos middleware injected (registered only when chaos is on)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["chaos"])


@router.get("/_chaos/stats")
def chaos_stats(request: Request) -> dict[str, Any]:
    """`{"seed", "requests", "injected": {"http_503", "http_429", "timeout", "poison_500", "bad_request_400"}}`."""
    return request.app.state.chaos.stats()
