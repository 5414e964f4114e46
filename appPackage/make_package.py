"""Build the Teams app package: ``appPackage/build/appPackage.zip`` with the bot's app id filled in.

Usage (``make package``)::

    BOT_APP_ID=<client id> [TEAMS_APP_ID=<manifest id>] [APP_HOSTNAME=<func app host>] python appPackage/make_package.py

``manifest.json`` holds ``${{BOT_APP_ID}}``, ``${{TEAMS_APP_ID}}`` and ``${{APP_HOSTNAME}}`` placeholders (the Teams
Toolkit's syntax). ``TEAMS_APP_ID`` defaults to the bot's app id, a common choice that keeps one id per app; set the
app setting of the same name to whatever the manifest carries. Upload the zip in the Teams admin center (or Teams:
Apps > Manage your apps > Upload an app).
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
FILES = ("color.png", "outline.png")


def render(template: str, values: dict[str, str]) -> str:
    """The manifest text with every ``${{NAME}}`` replaced; an unknown placeholder is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for placeholder {name}")
        return values[name]

    return re.sub(r"\$\{\{([A-Z_]+)\}\}", replace, template)


def values_from(environ: dict[str, str]) -> dict[str, str]:
    """Placeholder values from the environment, checked."""
    bot_id = environ.get("BOT_APP_ID", "").strip()
    if not GUID.match(bot_id):
        raise ValueError("BOT_APP_ID must be the bot's Entra app (client) id, a GUID")
    teams_id = environ.get("TEAMS_APP_ID", "").strip() or bot_id
    if not GUID.match(teams_id):
        raise ValueError("TEAMS_APP_ID must be a GUID")
    host = environ.get("APP_HOSTNAME", "").strip().lower() or "azurewebsites.net"
    if not HOSTNAME.match(host):
        raise ValueError("APP_HOSTNAME must be a host name such as func-proactive-abc.azurewebsites.net")
    return {"BOT_APP_ID": bot_id, "TEAMS_APP_ID": teams_id, "APP_HOSTNAME": host}


def build(values: dict[str, str], target: Path) -> Path:
    """Write the package zip to ``target`` and return it."""
    manifest = json.loads(render((HERE / "manifest.json").read_text(encoding="utf-8"), values))
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as package:
        package.writestr("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
        for name in FILES:
            package.write(HERE / name, arcname=name)
    return target


def main() -> int:
    try:
        values = values_from(dict(os.environ))
    except ValueError as exc:
        print(f"make package: {exc}", file=sys.stderr)
        return 2
    path = build(values, HERE / "build" / "appPackage.zip")
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
