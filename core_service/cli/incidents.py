"""`kyma admin incidents …`: the status page's incidents (each change audited by the core)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC
from typing import Any

from kyma.admin.v1 import admin_service_pb2 as pb
from kyma.status.v1 import status_service_pb2 as status_pb

Handler = Callable[[argparse.Namespace], int]
STATUSES = ("investigating", "identified", "monitoring", "resolved")


def _status(name: str | None) -> status_pb.IncidentStatus.ValueType:
    if not name:
        return status_pb.INCIDENT_STATUS_UNSPECIFIED
    return status_pb.IncidentStatus.Value(f"INCIDENT_STATUS_{name.upper()}")


def _line(incident: status_pb.Incident) -> str:
    status = status_pb.IncidentStatus.Name(incident.status).removeprefix("INCIDENT_STATUS_")
    updated = incident.updated_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
    return f"{incident.id}  {status.lower():<13} {updated}  {incident.title}\n    {incident.body}"


def add_incident_commands(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    admin: Callable[[], Any],
    show: Callable[[Any, bool, str], None],
    run: Callable[[Handler], Handler],
) -> None:
    """Register `incidents post|update|resolve|list` on the admin command's groups; `admin`
    makes the admin client, `show` prints a reply, `run` wraps a handler's gRPC errors."""

    def post(args: argparse.Namespace) -> int:
        client = admin()
        reply = client.call(
            client.stub.PostIncident,
            pb.PostIncidentRequest(
                title=args.title, body=args.body, status=_status(args.status), actor=args.actor
            ),
        )
        show(reply, args.json, _line(reply.incident))
        return 0

    def update(args: argparse.Namespace) -> int:
        client = admin()
        reply = client.call(
            client.stub.UpdateIncident,
            pb.UpdateIncidentRequest(
                id=args.id,
                body=args.body,
                status=_status(args.status),
                title=args.title or "",
                actor=args.actor,
            ),
        )
        show(reply, args.json, _line(reply.incident))
        return 0

    def resolve(args: argparse.Namespace) -> int:
        client = admin()
        reply = client.call(
            client.stub.ResolveIncident,
            pb.ResolveIncidentRequest(id=args.id, body=args.body or "", actor=args.actor),
        )
        show(reply, args.json, _line(reply.incident))
        return 0

    def listing(args: argparse.Namespace) -> int:
        client = admin()
        reply = client.call(
            client.stub.ListIncidents, pb.ListIncidentsRequest(include_resolved=args.all)
        )
        show(reply, args.json, "\n".join(_line(i) for i in reply.incidents) or "no incidents")
        return 0

    incidents = groups.add_parser("incidents", help="incidents on the public status page")
    commands = incidents.add_subparsers(dest="action", required=True)
    actor = os.environ.get("USER", "admin")

    command = commands.add_parser("post", help="post a new incident")
    command.add_argument("title")
    command.add_argument("--body", required=True, help="what users read: what is wrong")
    command.add_argument("--status", choices=STATUSES[:-1], default="investigating")
    command.add_argument("--actor", default=actor, help="who posts it (audited)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=run(post))

    command = commands.add_parser("update", help="say more about an open incident")
    command.add_argument("id", type=int)
    command.add_argument("--body", required=True)
    command.add_argument("--status", choices=STATUSES)
    command.add_argument("--title")
    command.add_argument("--actor", default=actor)
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=run(update))

    command = commands.add_parser("resolve", help="mark an incident resolved")
    command.add_argument("id", type=int)
    command.add_argument("--body", help='the last word (default "Resolved.")')
    command.add_argument("--actor", default=actor)
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=run(resolve))

    command = commands.add_parser("list", help="open incidents, newest first")
    command.add_argument("--all", action="store_true", help="resolved ones too")
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=run(listing))
