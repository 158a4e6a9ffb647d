"""AdminService, composed by delegation: each RPC is served by the one group that defines a
method of its name, found from the service descriptor when the servicer is built, so a group
missing an RPC (or two groups claiming one) fails at start-up, not at call time.

No RPC checks the admin token itself: the AdminToken interceptor checks it for every method
of the service before any group runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kyma.admin.v1 import admin_service_pb2

SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]


class AdminServicer:
    def __init__(self, *groups: object) -> None:
        self._methods: dict[str, Callable[..., Any]] = {}
        for method in SERVICE.methods:
            owners = [group for group in groups if callable(getattr(group, method.name, None))]
            if len(owners) != 1:
                names = ", ".join(type(g).__name__ for g in owners) or "no group"
                raise TypeError(f"AdminService.{method.name} must be served by one group: {names}")
            self._methods[method.name] = getattr(owners[0], method.name)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only reached for names the class itself lacks: the RPCs, as the generated
        # add_AdminServiceServicer_to_server looks them up.
        methods: dict[str, Callable[..., Any]] = self.__dict__["_methods"]
        try:
            return methods[name]
        except KeyError:
            raise AttributeError(name) from None
