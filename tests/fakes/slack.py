"""A fake Slack incoming webhook: `POST /services/<team>/<bot>/<token>` with a JSON message.

Answers as Slack does (https://api.slack.com/messaging/webhooks#handling_errors): `200 ok`
as plain text for a message, plain-text error codes otherwise (`404 no_service` for an unknown
webhook path, `400 invalid_payload` for a body that is not a JSON object, `400 no_text` for a
message without `text` or `blocks`). Faults (`fail_next("500")`) and a host that is down
(`refuse_connections()`) come from `FakeServer`.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.server import FakeServer, Recorded, Response

WEBHOOK_TOKEN = "T0TEST000/B0TEST000/webhook-secret-token"


class FakeSlackWebhook(FakeServer):
    realm = "Slack"

    def __init__(self, token: str = WEBHOOK_TOKEN) -> None:
        super().__init__()
        self.token = token
        self.path = f"/services/{token}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages Slack would have posted, in arrival order."""
        return [json.loads(r.body) for r in self.requests if r.status == 200]

    def error_response(self, status: int, message: str) -> Response:
        return _text(status, message)

    def route(self, req: Recorded) -> Response:
        if req.method != "POST" or req.path != self.path:
            return _text(404, "no_service")
        try:
            message = json.loads(req.body)
        except ValueError:
            return _text(400, "invalid_payload")
        if not isinstance(message, dict):
            return _text(400, "invalid_payload")
        if not message.get("text") and not message.get("blocks"):
            return _text(400, "no_text")
        return _text(200, "ok")


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode(), {"Content-Type": "text/plain; charset=utf-8"})
