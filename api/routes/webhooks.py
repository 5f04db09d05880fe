"""/v1/webhooks: where your jobs' ends are POSTed (worker/webhooks.py sends them): create one (its secret shown
once), list, get, delete, and each one's deliveries. A job's own webhook (`webhook_url` at submission) is here by
its id too; the job's deliveries are GET /v1/jobs/{id}/deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from store import webhooks

from ..deps import Config, CurrentCaller
from ..errors import ApiError, documented
from ..schemas import DeliveryOut, Page, WebhookCreate, WebhookCreated, WebhookOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=documented(400, 401, 404, 422, 503))
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, at most 100.")]
After = Annotated[str | None, Query(max_length=40, description="The previous page's `next`.")]


def missing(webhook_id: str) -> ApiError:
    return ApiError(404, f"no webhook {webhook_id!r}", param="webhook_id")


@router.post("", status_code=201, response_model=WebhookCreated, responses=documented(409),
             summary="Create a webhook for all your jobs; the answer holds its secret, shown only here")
def create_webhook(body: WebhookCreate, caller: CurrentCaller, settings: Config) -> WebhookCreated:
    with caller.session() as session:
        hook = webhooks.create_webhook(session, owner=caller.owner, url=body.url, event_types=body.events,
                                       limit=settings.max_webhooks)
        session.commit()
    return WebhookCreated.of(hook)


@router.get("", response_model=Page[WebhookOut], summary="Your webhooks for all your jobs, newest first")
def list_webhooks(caller: CurrentCaller, after: After = None, limit: Limit = 20) -> Page[WebhookOut]:
    with caller.session() as session:
        rows = webhooks.list_webhooks(session, caller.owner, after=after, limit=limit + 1)
    return Page[WebhookOut].of(rows, limit, WebhookOut.of)


@router.get("/{webhook_id}", response_model=WebhookOut, summary="One of your webhooks (without its secret)")
def get_webhook(webhook_id: str, caller: CurrentCaller) -> WebhookOut:
    with caller.session() as session:
        hook = webhooks.get_webhook(session, caller.owner, webhook_id)
    if hook is None:
        raise missing(webhook_id)
    return WebhookOut.of(hook)


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               summary="Delete a webhook with its deliveries: nothing more is sent to it")
def delete_webhook(webhook_id: str, caller: CurrentCaller) -> Response:
    with caller.session() as session:
        if not webhooks.delete_webhook(session, caller.owner, webhook_id):
            raise missing(webhook_id)
        session.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut],
            summary="A webhook's deliveries, newest first: status, attempts, the last answer or error")
def list_deliveries(webhook_id: str, caller: CurrentCaller, after: After = None,
                    limit: Limit = 20) -> Page[DeliveryOut]:
    with caller.session() as session:
        if webhooks.get_webhook(session, caller.owner, webhook_id) is None:
            raise missing(webhook_id)
        rows = webhooks.list_deliveries(session, webhook_id=webhook_id, after=after, limit=limit + 1)
    return Page[DeliveryOut].of(rows, limit, DeliveryOut.model_validate)
