"""Read ``gateway.yaml``: YAML (duplicate keys refused) -> ``${VAR}`` substitution -> validated model.

Every failure becomes one :class:`~gateway.errors.ConfigError` whose ``str()`` is a single line
``<file>: <key path>: <reason>``, e.g. ``gateway.yaml: routes[2].require.claim: field required``.
Secrets are never echoed into error messages: for values pydantic rejects we name the key path
and the expected type, not the offending input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys.

    PyYAML keeps the last of two equal keys silently; in a policy file that turns a typo into a
    lost ``require:``. Refusing is the only safe reading.
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``('routes', 2, 'require', '<all>', 'all', 0)`` -> ``routes[2].require.all[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("<") and part.endswith(">"):
            continue  # a discriminated-union tag, not a key the user wrote
        else:
            out += f".{part}" if out else part
    return out


def substitute_env(value: Any, env: Mapping[str, str], path: tuple[int | str, ...] = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree.

    Substitution happens after parsing, so a variable's value can never inject YAML structure.
    ``$$`` is a literal ``$``. An unset variable without a default is an error naming its key.
    """
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", path=format_loc(path))

        return _VAR.sub(repl, value) if "$" in value else value
    if isinstance(value, dict):
        return {k: substitute_env(v, env, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, (*path, i)) for i, v in enumerate(value)]
    return value


def _message(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def validation_error(exc: ValidationError, file: str) -> ConfigError:
    """Turn a pydantic error into one ConfigError line (the first error, plus a count)."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ConfigError(
        _message(first) + more, file=file, path=format_loc(tuple(first["loc"])) or "(top level)"
    )


def load_yaml(text: str, *, file: str = "<string>", error: type[ConfigError] = ConfigError) -> Any:
    """Parse YAML strictly (duplicate keys refused); ``error`` names the line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"invalid YAML: {problem}", file=file, path=where) from None


def read_text(path: str, *, error: type[ConfigError] = ConfigError) -> str:
    """Read a UTF-8 file; ``error`` says why it cannot be read (never a traceback)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise error(f"cannot read the file: {reason}", file=path) from None


def parse_config(text: str, *, file: str = "<string>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate config text. Raises ConfigError (one line) on any problem."""
    data = load_yaml(text, file=file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", file=file)
    try:
        data = substitute_env(data, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, path=exc.path) from None
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file) from None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, substitute and validate the config file at ``path``."""
    file = os.fspath(path)
    return parse_config(read_text(file), file=file, env=env)


def check_servable(cfg: GatewayConfig, file: str = "") -> None:
    """Refuse a config the server cannot run: ``mode: middleware`` is for in-process use only."""
    if cfg.mode == "middleware":
        raise ConfigError(
            "this config is for the in-process middleware; `serve` needs mode proxy or forward_auth",
            file=file,
            path="mode",
        )
