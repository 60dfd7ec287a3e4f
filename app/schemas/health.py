"""Liveness and readiness payloads."""

from __future__ import annotations

from pydantic import BaseModel


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
