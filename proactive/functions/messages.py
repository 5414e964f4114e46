"""``POST /api/messages``: the bot's messaging endpoint (anonymous at the Functions level, JWT-checked inside)."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from proactive.composition import services
from proactive.functions.http import json_response

bp = df.Blueprint()


@bp.function_name("messages")
@bp.route(route="messages", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def messages(req: func.HttpRequest) -> func.HttpResponse:
    endpoint = await services().bot_endpoint()
    answer = await endpoint.handle(req.get_body(), req.headers.get("Authorization"))
    return json_response(answer.body, status=answer.status)
