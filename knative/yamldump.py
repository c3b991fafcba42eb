"""YAML as edgeinfer writes manifests and diffs: key order kept, multi-line strings
(a ConfigMap's ``config.yaml``) as readable ``|`` blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["dump", "dump_all"]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any, *, sort_keys: bool = False) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=sort_keys, width=1000)


def dump_all(docs: Iterable[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=1000)
