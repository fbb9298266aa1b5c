"""``POST /v1/rejections`` (``enqueue``): the Lambda reports input it refused, for the monitor to
announce as ``scan.rejected`` (see ``service.rejections``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import TokenAuth
from service.api.responses import AUTH, JSON_BODY, errors
from service.api.schemas import RejectionRecorded
from service.rejections import Rejection, RejectionStore


class RejectionReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(min_length=1, max_length=1200, description="What was refused, stable across redeliveries.")
    source: Literal["s3", "sqs"]
    code: str = Field(min_length=1, max_length=64)
    message: str = Field(max_length=2000)
    scan_id: str | None = Field(default=None, max_length=128)
    scan_uri: str | None = Field(default=None, max_length=2048)


def rejections_router(store: RejectionStore, auth: TokenAuth) -> APIRouter:
    router = APIRouter(tags=["rejections"])

    @router.post("/v1/rejections", status_code=202, dependencies=[Depends(auth.require("enqueue"))],
                 response_model=RejectionRecorded, responses={
                     200: {"model": RejectionRecorded, "description": "That ref was reported already"},
                     **errors(*AUTH, *JSON_BODY)},
                 summary="Report input the Lambda refused (announced as scan.rejected)",
                 description="Kept once per `ref`: a repeat answers 200 with `recorded: false`.")
    def report(body: RejectionReport, response: Response) -> dict[str, Any]:
        recorded = store.record(Rejection(**body.model_dump()))
        response.status_code = 202 if recorded else 200
        return {"ref": body.ref, "recorded": recorded}

    return router
