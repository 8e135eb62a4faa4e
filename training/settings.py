"""Job settings: a YAML file with ``KEY=VALUE`` overrides from the command line."""

from __future__ import annotations

from pathlib import Path

import yaml


def load_settings(path=None, sets=()) -> dict:
    """The YAML file's settings (or none), then each ``key=value`` of ``sets`` on top; dotted
    keys reach nested settings and values are parsed as YAML (``split.block_cycle=[a, b]``)."""
    raw = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        node = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML reads 3e-3 (no dot) as text
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[leaf] = parsed
    return raw


def checked_settings(cls, path=None, sets=(), flags=None, what="job") -> dict:
    """``load_settings`` with command-line ``flags`` on top (unset ones ignored), refusing keys
    that are not fields of the dataclass ``cls``."""
    raw = load_settings(path, sets)
    raw.update({k: v for k, v in (flags or {}).items() if v not in (None, False, [])})
    unknown = set(raw) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}")
    return raw
