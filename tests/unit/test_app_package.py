"""The Teams app package: placeholders filled, icons Teams accepts, commands the bot understands."""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest

from proactive.bot.commands import CommandKind, parse_command

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "appPackage"
BOT_ID = "11111111-2222-3333-4444-555555555555"
TEAMS_ID = "99999999-8888-7777-6666-555555555555"


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_package", PACKAGE_DIR / "make_package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Width, height and RGBA pixels of an 8-bit RGBA PNG without filters (what the icons are written as)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 6), "icons are 8-bit RGBA"
    offset, idat = 8, b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 4 * width
    pixels = []
    for row in range(height):
        line = raw[row * stride : (row + 1) * stride]
        assert line[0] == 0, "unfiltered rows"
        pixels += [tuple(line[1 + 4 * i : 5 + 4 * i]) for i in range(width)]
    return width, height, pixels  # type: ignore[return-value]


@pytest.fixture
def package(tmp_path: Path) -> zipfile.ZipFile:
    builder = load_builder()
    values = builder.values_from(
        {"BOT_APP_ID": BOT_ID, "APP_HOSTNAME": "func-proactive-abc.azurewebsites.net"}
    )
    return zipfile.ZipFile(builder.build(values, tmp_path / "appPackage.zip"))


def test_the_package_holds_the_manifest_and_both_icons_at_its_root(package: zipfile.ZipFile) -> None:
    assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]


def test_the_bot_id_fills_every_placeholder_and_defaults_the_app_id(package: zipfile.ZipFile) -> None:
    text = package.read("manifest.json").decode("utf-8")
    assert "${{" not in text
    manifest = json.loads(text)
    assert manifest["id"] == BOT_ID
    assert manifest["bots"][0]["botId"] == BOT_ID
    assert manifest["webApplicationInfo"] == {"id": BOT_ID, "resource": f"api://botid-{BOT_ID}"}
    assert manifest["validDomains"] == ["func-proactive-abc.azurewebsites.net"]


def test_a_separate_teams_app_id_is_used_when_given(tmp_path: Path) -> None:
    builder = load_builder()
    path = builder.build(
        builder.values_from({"BOT_APP_ID": BOT_ID, "TEAMS_APP_ID": TEAMS_ID}), tmp_path / "p.zip"
    )
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["id"] == TEAMS_ID and manifest["bots"][0]["botId"] == BOT_ID


@pytest.mark.parametrize(
    "environ", [{}, {"BOT_APP_ID": "my-bot"}, {"BOT_APP_ID": BOT_ID, "APP_HOSTNAME": "https://x.net/"}]
)
def test_bad_values_are_refused_before_anything_is_written(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"BOT_APP_ID|APP_HOSTNAME"):
        load_builder().values_from(environ)


def test_the_bot_is_installable_everywhere_broadcasts_go_and_asks_for_no_extra_permissions() -> None:
    manifest = json.loads((PACKAGE_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["manifestVersion"] in manifest["$schema"]
    assert set(manifest["bots"][0]["scopes"]) == {"personal", "team", "groupChat"}
    # No resource-specific consent and no legacy permissions: Graph installs use application permissions
    # (TeamsAppInstallation.ReadWriteSelfFor*.All) consented by an admin, which webApplicationInfo ties to the app.
    assert "authorization" not in manifest and "permissions" not in manifest
    assert len(manifest["name"]["short"]) <= 30 and len(manifest["description"]["short"]) <= 80


def test_every_listed_command_is_one_the_bot_understands() -> None:
    manifest = json.loads((PACKAGE_DIR / "manifest.json").read_text(encoding="utf-8"))
    for command_list in manifest["bots"][0]["commandLists"]:
        for command in command_list["commands"]:
            assert parse_command(command["title"]).kind is not CommandKind.UNKNOWN, command["title"]


def test_icons_have_the_sizes_teams_requires_and_the_outline_is_white_on_transparent(
    package: zipfile.ZipFile,
) -> None:
    width, height, _ = png_pixels(package.read("color.png"))
    assert (width, height) == (192, 192)
    width, height, pixels = png_pixels(package.read("outline.png"))
    assert (width, height) == (32, 32)
    assert {pixel for pixel in pixels} <= {(255, 255, 255, 255), (0, 0, 0, 0)}
    assert (255, 255, 255, 255) in pixels


# ---- the published Teams manifest schema ------------------------------------------------------------------

SCHEMA_DIR = PACKAGE_DIR / "schema"


def manifest_schema(manifest: dict[str, object]) -> dict[str, object]:
    """The shipped copy of the schema the manifest's ``$schema`` names (appPackage/schema/README.md says where from)."""
    url = str(manifest["$schema"])
    version = manifest["manifestVersion"]
    assert url == f"https://developer.microsoft.com/json-schemas/teams/v{version}/MicrosoftTeams.schema.json"
    path = SCHEMA_DIR / f"v{version}" / "MicrosoftTeams.schema.json"
    assert path.is_file(), f"ship the v{version} schema in {SCHEMA_DIR} (see its README.md)"
    schema: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def manifest_errors(manifest: dict[str, object], schema: dict[str, object]) -> list[str]:
    """Every violation of ``schema`` in ``manifest``, as ``path: message``.

    The schema declares draft-04 but uses ``const`` (draft-06), as Teams' own validator (Ajv's draft-04 mode)
    accepts; a plain draft-04 validator would skip it, so ``const`` is added to it here.
    """
    draft4 = jsonschema.validators.validator_for(schema)
    assert draft4 is jsonschema.Draft4Validator
    validator_class = jsonschema.validators.extend(
        draft4, {"const": jsonschema.Draft6Validator.VALIDATORS["const"]}
    )
    draft4.check_schema(schema)
    validator = validator_class(schema, format_checker=draft4.FORMAT_CHECKER)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]


def test_the_packaged_manifest_is_valid_against_the_published_schema_of_its_version(
    package: zipfile.ZipFile,
) -> None:
    manifest = json.loads(package.read("manifest.json"))
    assert manifest_errors(manifest, manifest_schema(manifest)) == []


def test_the_schema_check_catches_what_teams_would_refuse(package: zipfile.ZipFile) -> None:
    manifest = json.loads(package.read("manifest.json"))
    schema = manifest_schema(manifest)
    broken = {**manifest, "accentColor": "blue", "unknownField": True}
    del broken["developer"]
    errors = "\n".join(manifest_errors(broken, schema))
    assert "'developer' is a required property" in errors
    assert "accentColor" in errors and "unknownField" in errors
    # const (the schema's manifestVersion) is enforced too.
    older = {**manifest, "manifestVersion": "1.18"}
    assert any(error.startswith("manifestVersion:") for error in manifest_errors(older, schema))
