"""The local Functions host: HTTP triggers with function keys (``server``), queue and timer triggers (``triggers``).

Owns discovery through ``app.get_functions()``, the ``serve`` command and the admin and stats routes.
May import: devhost.durable (the engine), devhost.settings, devhost.latency; ``triggers`` never imports ``server``.
"""

from devhost.host.server import DevHost, build_store, compile_route, main, parse_args, serve, with_storage
from devhost.host.triggers import Ncrontab, TriggerService

__all__ = [
    "DevHost",
    "Ncrontab",
    "TriggerService",
    "build_store",
    "compile_route",
    "main",
    "parse_args",
    "serve",
    "with_storage",
]
