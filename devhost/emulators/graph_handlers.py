"""The Graph routes the emulator answers and their handlers (see :mod:`devhost.emulators.graph_service`).

Each handler gets the service, the authenticated :class:`Call` and the route's match, and returns a
:class:`Reply` or raises :class:`GraphError`. Throttling happens after the directory lookups (a 404
costs no quota) and before the conflict check (a 409 does), as the installs are metered by Graph.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from devhost.emulators import graph_events
from devhost.emulators.graph_service import (
    JSON_CONTENT_TYPE,
    MAX_BATCH_REQUESTS,
    NOT_FOUND,
    Call,
    GraphError,
    GraphService,
    Installation,
    Reply,
    Route,
    app_json,
    error_body,
    make_installation_id,
    matches,
    now_utc,
    parse_filter,
    per_second,
    route,
    select_properties,
    user_json,
)

# --- handlers -----------------------------------------------------------------------------------------


async def _catalog(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    apps = [app_json(app) for app in service.tenant(call).apps]
    clauses = parse_filter(call.query.get("$filter"))
    value = [app for app in apps if matches(app, clauses)]
    return Reply(
        200, {"@odata.context": f"{call.base_url}/v1.0/$metadata#appCatalogs/teamsApps", "value": value}
    )


async def _catalog_item(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    for app in service.tenant(call).apps:
        if app.id == match["app"]:
            return Reply(200, app_json(app))
    raise GraphError(404, f"The Teams app '{match['app']}' was not found in the app catalog.", "NotFound")


def _installation_json(installation: Installation) -> dict[str, Any]:
    odata_type = (
        "#microsoft.graph.userScopeTeamsAppInstallation"
        if installation.scope == "user"
        else "#microsoft.graph.teamsAppInstallation"
    )
    app = installation.app
    definition_id = base64.b64encode(f"{app.id}##{app.version}".encode()).decode()
    return {
        "@odata.type": odata_type,
        "id": installation.id,
        "consentedPermissionSet": None,
        "teamsApp": app_json(app),
        "teamsAppDefinition": {
            "id": definition_id,
            "teamsAppId": app.id,
            "displayName": app.display_name,
            "version": app.version,
        },
    }


def _render_installations(call: Call, installations: list[Installation]) -> list[dict[str, Any]]:
    clauses = parse_filter(call.query.get("$filter"))
    expand = {part.strip().lower() for part in call.query.get("$expand", "").split(",") if part.strip()}
    rendered = []
    for installation in installations:
        item = _installation_json(installation)
        # $filter on teamsApp/... works whether or not teamsApp is expanded, as in Graph.
        if not matches(item, clauses):
            continue
        for navigation in ("teamsApp", "teamsAppDefinition"):
            if navigation.lower() not in expand:
                del item[navigation]
        rendered.append(item)
    return rendered


def _owned(service: GraphService, call: Call, scope: str, owner_id: str) -> list[Installation]:
    return [
        installation
        for installation in service.installations.values()
        if installation.scope == scope
        and installation.owner_id.lower() == owner_id.lower()
        and installation.tenant_id.lower() == call.caller.tenant_id.lower()
    ]


def _limits(service: GraphService, kind: str) -> tuple[float | None, float | None]:
    throttle = service.config.throttle
    return {
        "read": (throttle.read_per_tenant, throttle.read_per_app),
        "install": (throttle.install_per_tenant, throttle.install_per_app),
        "delete": (throttle.delete_per_tenant, throttle.delete_per_app),
    }[kind]


async def _list_user_apps(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    user = service.user(call, match["user"])
    service.throttle(call, "read", *_limits(service, "read"))
    value = _render_installations(call, _owned(service, call, "user", user.id))
    context = f"{call.base_url}/v1.0/$metadata#users('{user.id}')/teamwork/installedApps"
    return Reply(200, {"@odata.context": context, "value": value})


async def _get_user_app(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    user = service.user(call, match["user"])
    service.throttle(call, "read", *_limits(service, "read"))
    installation = service.installation(call, "user", user.id, match["installation"])
    return Reply(200, _render_installations(call, [installation])[0])


async def _install_user(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    user = service.user(call, match["user"])
    app = service.app_from_bind(call)
    service.throttle(call, "install", *_limits(service, "install"))
    new_id = make_installation_id(user.id, app.id)
    if new_id in service.installations:
        raise GraphError(409, "App is already installed for this user.", "Conflict")
    tenant_id = service.tenant(call).id
    chat_id = graph_events.personal_chat_id(user.id, app.bot_app_id)
    service.installations[new_id] = Installation(new_id, tenant_id, "user", user.id, app, chat_id)
    service.stats.installs[tenant_id] += 1
    service.post_activities(
        graph_events.personal_install_activities(
            user=user,
            app=app,
            tenant_id=tenant_id,
            chat_id=chat_id,
            service_url=service.config.teams_service_url,
            now=now_utc(),
        )
    )
    # Graph documents "201 Created" with no body for this call.
    return Reply(201, None)


async def _uninstall_user(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    user = service.user(call, match["user"])
    service.throttle(call, "delete", *_limits(service, "delete"))
    installation = service.installation(call, "user", user.id, match["installation"])
    del service.installations[installation.id]
    service.stats.uninstalls[installation.tenant_id] += 1
    service.post_activities(
        graph_events.personal_install_activities(
            user=user,
            app=installation.app,
            tenant_id=installation.tenant_id,
            chat_id=installation.chat_id or "",
            service_url=service.config.teams_service_url,
            now=now_utc(),
            action="remove",
        )
    )
    return Reply(204, None)


async def _chat(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    user = service.user(call, match["user"])
    installation = service.installation(call, "user", user.id, match["installation"])
    chat_id = installation.chat_id or ""
    rate = service.config.throttle.chat_per_chat
    if rate is not None:
        service.admit([(("chat", chat_id), [per_second(rate)])])
    created = now_utc().isoformat().replace("+00:00", "Z")
    return Reply(
        200,
        {
            "@odata.context": f"{call.base_url}/v1.0/$metadata#chats/$entity",
            "id": chat_id,
            "topic": None,
            "createdDateTime": created,
            "lastUpdatedDateTime": created,
            "chatType": "oneOnOne",
            "webUrl": f"https://teams.microsoft.com/l/chat/{quote(chat_id)}/0?tenantId={installation.tenant_id}",
            "tenantId": installation.tenant_id,
            "onlineMeetingInfo": None,
            "viewpoint": None,
        },
    )


async def _list_team_apps(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    team = service.team(call, match["team"])
    service.throttle(call, "read", *_limits(service, "read"))
    value = _render_installations(call, _owned(service, call, "team", team.id))
    context = f"{call.base_url}/v1.0/$metadata#teams('{team.id}')/installedApps"
    return Reply(200, {"@odata.context": context, "value": value})


async def _get_team_app(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    team = service.team(call, match["team"])
    service.throttle(call, "read", *_limits(service, "read"))
    installation = service.installation(call, "team", team.id, match["installation"])
    return Reply(200, _render_installations(call, [installation])[0])


async def _primary_channel(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    """``GET /teams/{id}/primaryChannel``: the General channel (a GET channel, metered as a read)."""
    team = service.team(call, match["team"])
    service.throttle(call, "read", *_limits(service, "read"))
    general = team.general_channel
    channel = {
        "@odata.context": f"{call.base_url}/v1.0/$metadata#teams('{team.id}')/primaryChannel/$entity",
        "id": general.id,
        "createdDateTime": None,
        "displayName": general.display_name,
        "description": team.display_name,
        "email": None,
        "webUrl": f"https://teams.microsoft.com/l/channel/{quote(general.id)}/General?groupId={team.id}",
        "membershipType": "standard",
        "tenantId": service.tenant(call).id,
    }
    return Reply(200, select_properties(channel, call.query.get("$select")))


async def _install_team(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    team = service.team(call, match["team"])
    app = service.app_from_bind(call)
    service.throttle(call, "install", *_limits(service, "install"))
    new_id = make_installation_id(team.id, app.id)
    if new_id in service.installations:
        raise GraphError(409, "App is already installed in this team.", "Conflict")
    tenant_id = service.tenant(call).id
    service.installations[new_id] = Installation(new_id, tenant_id, "team", team.id, app, None)
    service.stats.installs[tenant_id] += 1
    service.post_activities(
        graph_events.team_install_activities(
            team=team,
            app=app,
            tenant_id=tenant_id,
            installer_app_id=call.caller.app_id,
            service_url=service.config.teams_service_url,
            now=now_utc(),
        )
    )
    return Reply(201, None)


async def _uninstall_team(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    team = service.team(call, match["team"])
    service.throttle(call, "delete", *_limits(service, "delete"))
    installation = service.installation(call, "team", team.id, match["installation"])
    del service.installations[installation.id]
    service.stats.uninstalls[installation.tenant_id] += 1
    service.post_activities(
        graph_events.team_install_activities(
            team=team,
            app=installation.app,
            tenant_id=installation.tenant_id,
            installer_app_id=call.caller.app_id,
            service_url=service.config.teams_service_url,
            now=now_utc(),
            action="remove",
        )
    )
    return Reply(204, None)


def _group_members(
    service: GraphService, call: Call, group_id: str, *, transitive: bool
) -> list[dict[str, Any]]:
    tenant = service.tenant(call)
    users = {user.id.lower(): user for user in tenant.users}
    groups = {group.id.lower(): group for group in tenant.groups}
    root = groups.get(group_id.lower())
    if root is None:
        raise GraphError(
            404,
            NOT_FOUND.format(group_id),
            "Request_ResourceNotFound",
        )
    seen: set[str] = set()
    result: list[dict[str, Any]] = []
    pending = deque([root])
    while pending:
        group = pending.popleft()
        for member_id in group.members:
            key = member_id.lower()
            if key in seen:
                continue
            seen.add(key)
            if key in users:
                result.append(user_json(users[key]))
            elif key in groups:
                nested = groups[key]
                result.append(
                    {
                        "@odata.type": "#microsoft.graph.group",
                        "id": nested.id,
                        "displayName": nested.display_name,
                    }
                )
                if transitive:
                    pending.append(nested)
    return result


def _cast(items: list[dict[str, Any]], cast: str | None) -> list[dict[str, Any]]:
    if not cast:
        return items
    return [item for item in items if item["@odata.type"] == f"#microsoft.graph.{cast.lower()}"]


async def _transitive_members(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    members = _group_members(service, call, match["group"], transitive=True)
    return service.page(call, _cast(members, match["cast"]))


async def _members(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    members = _group_members(service, call, match["group"], transitive=False)
    return service.page(call, _cast(members, match["cast"]))


async def _users(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    return service.page(call, [user_json(user) for user in service.tenant(call).users])


async def _user(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    return Reply(
        200, select_properties(user_json(service.user(call, match["user"])), call.query.get("$select"))
    )


async def _batch(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    if call.in_batch:
        raise GraphError(400, "A $batch request cannot contain another $batch request.", "BadRequest")
    requests = call.body.get("requests") if isinstance(call.body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise GraphError(400, "Invalid batch payload format.", "BadRequest")
    if len(requests) > MAX_BATCH_REQUESTS:
        raise GraphError(
            400,
            f"The number of requests in the batch exceeds the limit of {MAX_BATCH_REQUESTS}.",
            "BadRequest",
        )
    ids = [item.get("id") if isinstance(item, dict) else None for item in requests]
    if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
        raise GraphError(400, "Every request in a batch needs a unique, non-empty 'id'.", "BadRequest")
    statuses: dict[str, int] = {}
    responses = []
    for item in requests:
        inner = await _batch_item(service, call, item, statuses)
        statuses[item["id"]] = inner.status
        entry: dict[str, Any] = {"id": item["id"], "status": inner.status, "headers": inner.headers}
        if inner.body is not None:
            entry["headers"] = {**inner.headers, "Content-Type": JSON_CONTENT_TYPE}
            entry["body"] = inner.body
        responses.append(entry)
    return Reply(200, {"responses": responses})


async def _batch_item(
    service: GraphService, call: Call, item: dict[str, Any], statuses: dict[str, int]
) -> Reply:
    depends_on = item.get("dependsOn") or item.get("depends_on") or []
    failed = [d for d in depends_on if not 200 <= statuses.get(d, 424) < 300]
    if failed:
        request_id = str(uuid.uuid4())
        error = error_body("FailedDependency", "Dependent request failed.", request_id, None)
        return Reply(424, error, {"request-id": request_id})
    method = str(item.get("method", "GET")).upper()
    url = str(item.get("url", ""))
    parts = urlsplit(url)
    path = unquote(parts.path)
    # Accept absolute URLs and a leading version segment: the Python SDK sends "/v1.0/..." inside batches.
    path = re.sub(r"^/?(v1\.0|beta)(?=/)", "", path)
    if not path.startswith("/"):
        path = "/" + path
    body: Any = item.get("body")
    if isinstance(body, str):
        # Non-object bodies travel base64-encoded (the SDK does this); decode JSON ones.
        try:
            body = json.loads(base64.b64decode(body))
        except (ValueError, binascii.Error):
            body = None
    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
    inner = Call(
        method=method,
        path=path,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        body=body,
        caller=call.caller,
        base_url=call.base_url,
        client_request_id=headers.get("client-request-id"),
        in_batch=True,
    )
    return await service.dispatch(inner)


ROUTES: list[Route] = [  # the order matters only for equal paths
    route("GET", "/appCatalogs/teamsApps", "catalog", _catalog),
    route("GET", "/appCatalogs/teamsApps/{app}", "catalog", _catalog_item),
    route("GET", "/users", "users", _users),
    route("GET", "/users/{user}", "user", _user),
    route("GET", "/users/{user}/teamwork/installedApps", "listUserApps", _list_user_apps),
    route("POST", "/users/{user}/teamwork/installedApps", "installUser", _install_user),
    route("GET", "/users/{user}/teamwork/installedApps/{installation}", "getUserApp", _get_user_app),
    route("DELETE", "/users/{user}/teamwork/installedApps/{installation}", "uninstallUser", _uninstall_user),
    route("GET", "/users/{user}/teamwork/installedApps/{installation}/chat", "chat", _chat),
    route("GET", "/teams/{team}/primaryChannel", "primaryChannel", _primary_channel),
    route("GET", "/teams/{team}/installedApps", "listTeamApps", _list_team_apps),
    route("POST", "/teams/{team}/installedApps", "installTeam", _install_team),
    route("GET", "/teams/{team}/installedApps/{installation}", "getTeamApp", _get_team_app),
    route("DELETE", "/teams/{team}/installedApps/{installation}", "uninstallTeam", _uninstall_team),
    route("GET", "/groups/{group}/transitiveMembers{cast}", "transitiveMembers", _transitive_members),
    route("GET", "/groups/{group}/members{cast}", "members", _members),
    route("POST", "/$batch", "batch", _batch),
]
