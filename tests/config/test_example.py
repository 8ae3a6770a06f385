"""gateway.example.yaml documents every option and its default (as the model has it), and is itself
a valid config."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from gateway.config.loader import load_config
from gateway.config.models import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway.example.yaml"


def _models(annotation: object) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        found.extend(_models(arg))
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            found.extend(_models(arg))
    return found


def _option_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for sub in _models(field.annotation):
            names |= _option_names(sub, seen)
    return names


def test_every_option_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    keys = set(re.findall(r"(?:^|[\s{,#\[])([a-z_]+):", text, re.MULTILINE))
    missing = sorted(_option_names(GatewayConfig, set()) - keys)
    assert missing == [], f"options missing from gateway.example.yaml: {missing}"


def test_example_is_a_valid_config() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.providers["corp"].discovery
    assert cfg.routes[0].auth == "public"


# ------------------------------------------------------------------ documented defaults

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- +)?(?P<key>[A-Za-z_][\w-]*):(?: +(?P<rest>.*))?$")
_DEFAULT = re.compile(r"\bdefault(?P<colon>:)? +(?P<word>\S+)")

#: Comments whose word after "default" describes the default instead of writing it, reviewed by
#: hand: the route's name is computed (None in the model); "any" host is null; "loopback" is
#: [127.0.0.1/32, ::1/128]. For the last two, the value written on the line is the default and
#: is compared instead. Comments written "default: <prose>" are skipped by the reader
#: (routes.match.methods, routes.providers, routes.upstream, routes.preserve_host), as are
#: options whose comment states no default (upstream, the key sources, audiences/audience).
PROSE_DEFAULTS = {
    "routes.name": ("route<index>", False),
    "routes.match.host": ("any", True),
    "forward_auth.trusted_sources": ("loopback", True),
}


def _value_and_comment(rest: str) -> tuple[str, str | None]:
    """``value   # comment`` -> (value, comment); a value holds no `` #`` in this file."""
    if rest.startswith("#"):
        return "", rest[1:].strip()
    value, sep, comment = rest.partition(" #")
    return value.strip(), comment.strip() if sep else None


def documented_defaults(text: str) -> dict[str, tuple[str, str, int]]:
    """Dotted option path -> (the word after ``default``, the value written, line number).

    Paths skip list items (``routes.match.path``) but keep mapping keys the user chooses
    (``providers.corp.jwks.timeout``). A comment continued on the following comment-only lines
    whose ``#`` is aligned with its own is read as one comment (``proxy.head_timeout``).
    ``default as shown`` documents the value written on the line.
    """
    found: dict[str, tuple[str, str, int]] = {}
    stack: list[tuple[int, str]] = []  # (key column, key) of the enclosing mappings
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        i += 1
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        column = len(m.group("indent")) + len(m.group("dash") or "")
        while stack and stack[-1][0] >= column:
            stack.pop()
        stack.append((column, m.group("key")))
        value, comment = _value_and_comment(m.group("rest") or "")
        if comment is None:
            continue
        hash_column = line.index("#", column)
        while i < len(lines) and lines[i].lstrip().startswith("#") and lines[i].index("#") == hash_column:
            comment += " " + lines[i].strip()[1:].strip()
            i += 1
        d = _DEFAULT.search(comment)
        if d is None or d.group("colon"):
            continue
        word = d.group("word").rstrip(".,;")
        if word == "as" and comment[d.end() :].startswith(" shown"):
            word = value
        found[".".join(key for _, key in stack)] = (word, value, number)
    return found


def _field(path: str) -> FieldInfo:
    """The model field an option path of the example names."""
    model: type[BaseModel] = GatewayConfig
    parts = path.split(".")
    while True:
        name = parts.pop(0)
        field = {f.alias or key: f for key, f in model.model_fields.items()}[name]
        if not parts:
            return field
        if typing.get_origin(field.annotation) is dict:
            parts.pop(0)  # a key the user chooses: a provider's or a claim header's name
        (model,) = _models(field.annotation)


def _read_as_config(field: FieldInfo, written: str) -> object:
    """A value written in the example, read as the config reads it (``10m`` -> 600.0)."""
    annotation: Any = field.annotation
    if field.metadata:  # Duration / ByteSize parsers, ge/le bounds
        annotation = typing.Annotated[(annotation, *field.metadata)]
    return TypeAdapter(annotation).validate_python(yaml.safe_load(written))


def _model_default(field: FieldInfo) -> object:
    value = field.get_default(call_default_factory=True)
    return value.model_dump() if isinstance(value, BaseModel) else value


def default_mismatches(text: str) -> list[str]:
    """Every documented default that differs from the model's (empty: the docs are right)."""
    docs = documented_defaults(text)
    problems = []
    for path, (expected_word, compare_written) in PROSE_DEFAULTS.items():
        word, written, number = docs.pop(path, ("(missing)", "", 0))
        if word != expected_word:
            problems.append(f"{path}: the reviewed prose default {expected_word!r} is now {word!r}")
        elif compare_written:
            docs[path] = (written, written, number)
    for path, (word, _, number) in sorted(docs.items()):
        field = _field(path)
        try:
            documented = _read_as_config(field, word)
        except ValidationError:
            problems.append(f"line {number}: {path}: documented default {word!r} is not a valid value")
            continue
        actual = _model_default(field)
        if documented != actual:
            problems.append(
                f"line {number}: {path}: documented default {word} ({documented!r}) != {actual!r}"
            )
    return problems


def test_the_reader_finds_the_default_comments() -> None:
    docs = documented_defaults(EXAMPLE.read_text())
    # The reader itself: plain, with a unit, after "a | b;", continued on the next comment
    # line, "as shown", in a chosen-key mapping, followed by a full stop.
    assert docs["listen.port"][0] == "8080"
    assert docs["providers.corp.jwks.default_ttl"][0] == "10m"
    assert docs["mode"][0] == "proxy"
    assert docs["proxy.head_timeout"][0] == "10s"
    assert docs["paths.normalize"][0] == "[]"
    assert docs["headers.strip"][0] == "[X-Original-URL, X-Rewrite-URL, X-HTTP-Method-Override]"
    assert docs["headers.claims.X-User-Roles.max_bytes"][0] == "4KiB"
    assert docs["providers.corp.token.websocket_protocol"][0] == "false"
    for prose in ("routes.match.methods", "routes.providers", "routes.upstream", "routes.preserve_host"):
        assert prose not in docs  # "default: <prose>"
    assert len(docs) == 83  # every "default X" comment of the file; update when adding options


def test_documented_defaults_equal_the_model_defaults() -> None:
    assert default_mismatches(EXAMPLE.read_text()) == []


def test_a_wrong_documented_default_is_reported() -> None:
    text = EXAMPLE.read_text()
    doctored = text.replace(
        "default_ttl: 10m          # TTL without Cache-Control max-age; default 10m",
        "default_ttl: 10m          # TTL without Cache-Control max-age; default 5m",
    )
    doctored = doctored.replace("# default 9901", "# default 9902")
    doctored = doctored.replace("; default loopback", "; default [127.0.0.1/32]")
    assert doctored.count("default 5m") == 2 and "default 9902" in doctored

    def line_of(text: str) -> int:
        return doctored[: doctored.index(text)].count("\n") + 1

    admin_line = line_of("# default 9902")
    ttl_line = line_of("max-age; default 5m")
    assert default_mismatches(doctored) == [
        "forward_auth.trusted_sources: the reviewed prose default 'loopback' is now '[127.0.0.1/32]'",
        f"line {admin_line}: admin.port: documented default 9902 (9902) != 9901",
        f"line {ttl_line}: providers.corp.jwks.default_ttl: documented default 5m (300.0) != 600.0",
    ]
