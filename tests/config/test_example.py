"""gateway.example.yaml documents every option, and is itself a valid config."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

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
