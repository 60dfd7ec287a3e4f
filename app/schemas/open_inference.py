"""The JSON of the Open Inference Protocol v2 (KServe, Triton) that this service reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """The JSON part of an inference request (its binary tensors follow it, if any)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None
