"""``python -m devhost <command>``: the local development host and its emulators.

Commands:
    serve            run function_app.py's functions on http://127.0.0.1:7071 (like ``func start``)
    run              Azurite + Teams emulator + Graph emulator + host together (``make run``)
    emulate-teams    the Bot Connector v3 emulator
    emulate-graph    the Microsoft Graph emulator
    azurite          Azurite alone, in memory, printing its connection string
    seed             capture test users through /api/messages (for ``run``: ``seed --users 5``)
    demo             the whole product shown: stack, audience, broadcast with a live view, report (``make demo``)
"""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; each function takes argv (without the command) and returns an exit code.
COMMANDS = {
    "serve": "devhost.host:main",
    "run": "devhost.run:main",
    "emulate-teams": "devhost.emulators.teams:main",
    "emulate-graph": "devhost.emulators.graph:main",
    "azurite": "devhost.run:azurite_main",
    "seed": "devhost.seed:main",
    "demo": "devhost.demo.run:main",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module_name, function_name = COMMANDS[argv[0]].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
