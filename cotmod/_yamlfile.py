"""Reading the YAML files users hand to cotmod, safely and with one clear error per problem.

:func:`read_yaml_mapping` reads the small files (label mappings, thresholds, the enforcement
manifest); policy files have their own loader with line numbers (:mod:`cotmod.policy._lint`),
built on the same guards here:

* a file larger than :data:`MAX_YAML_BYTES` is refused (``file: too large``) before it is parsed;
* aliases (``*name``) are allowed, but the document they expand to is bounded: an "alias bomb"
  (a few hundred bytes that expand to billions of nodes, "billion laughs") or a recursive alias is
  refused with ``file:line: ...`` instead of exhausting memory in whatever walks the data next;
* nesting deeper than the parser can follow is refused, not a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ._exceptions import InputError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_NODES", "GuardedLoader", "YamlGuardError", "read_yaml_mapping", "safe_compose"]

#: Largest YAML file cotmod reads (bytes).
MAX_YAML_BYTES = 5 * 1024 * 1024
#: Most nodes a document may expand to once every alias is followed (the starter pack's largest
#: policy has about 1,000).
MAX_YAML_NODES = 100_000


class YamlGuardError(Exception):
    """A document refused by the guards: ``line`` (1-based, or None) and what is wrong."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class GuardedLoader(yaml.SafeLoader):
    """A SafeLoader that records where aliases are used, so :func:`safe_compose` can bound the
    expanded size of the document and point at the first alias."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_lines: list[int] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.alias_lines.append(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _expanded_size(root: yaml.Node, budget: int, first_alias: int | None) -> None:
    """Raise YamlGuardError if following every alias visits more than ``budget`` nodes, or if an
    alias refers to a node that contains it. Linear in the size of the composed (shared) graph."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    # iterative post-order walk (deeply nested documents must not hit the recursion limit)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            open_.discard(key)
            sizes[key] = total
            if total > budget:
                raise YamlGuardError(
                    first_alias,
                    f"document expands to more than {budget:,} nodes through aliases (a YAML alias bomb?); "
                    "write the values out instead of using aliases",
                )
            continue
        if key in sizes:
            continue
        if key in open_:
            raise YamlGuardError(node.start_mark.line + 1, "recursive alias (a node that contains itself)")
        open_.add(key)
        stack.append((node, True))
        for c in _children(node):
            if id(c) in open_:
                raise YamlGuardError(c.start_mark.line + 1, "recursive alias (a node that contains itself)")
            if id(c) not in sizes:
                stack.append((c, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def safe_compose(text: str, loader_cls: type[GuardedLoader] = GuardedLoader) -> tuple[yaml.Node | None, Any]:
    """Parse one YAML document: (its node graph, its data). Raises :class:`YamlGuardError` for an
    alias bomb, a recursive alias or too deep nesting, and ``yaml.YAMLError`` for bad syntax."""
    loader = loader_cls(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlGuardError(None, "nesting too deep") from None
        if node is None:
            return None, None
        if loader.alias_lines:
            _expanded_size(node, MAX_YAML_NODES, loader.alias_lines[0])
        try:
            data = loader.construct_document(node)
        except RecursionError:
            raise YamlGuardError(None, "nesting too deep") from None
        return node, data
    finally:
        loader.dispose()


def read_text_limited(path: Path, limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of ``path``; raises OSError if missing and InputError (``file: too large``)
    if larger than ``limit``."""
    size = path.stat().st_size
    if size > limit:
        raise InputError(f"{path}: too large ({size:,} bytes; the limit is {limit:,} bytes = {limit / 2**20:g} MiB)")
    return path.read_bytes()


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file ({} if the file is empty); ``what`` names the file
    in errors ("label mapping", "thresholds file", ...)."""
    path = Path(path)
    try:
        text = read_text_limited(path).decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected the {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    try:
        _, data = safe_compose(text)
    except YamlGuardError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise InputError(f"{where}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level of the {what}")
    return data
