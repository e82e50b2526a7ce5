"""In-place YAML editing: change scalar values without touching any other byte.

This is pure text-to-text. PyYAML's node marks give the exact character span of
each scalar; a changed value is written over its span, keeping the quoting
style it had where that can represent the new value. A key that is missing is
inserted as a new line at the end of its section with the indentation of the
section's other keys (or two spaces more than the section key), a string value
in double quotes as the example file writes them (so the tokens of every Trakt
account look alike, whether their keys were there or not); a missing
section is appended at the end of the file. Line endings follow the file's
(CRLF stays CRLF).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from cwhook.config.yamlerrors import explain_yaml_error

Scalar = str | int | float | bool
Path = tuple[str, ...]

_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./+][A-Za-z0-9_./@+\-:= ]*$")
_RESERVED = {"", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n"}


class YamlEditError(Exception):
    """The file cannot be edited in place (not YAML, or a non-mapping in the way)."""


def format_scalar(value: Scalar, style: str | None = None) -> str:
    """YAML text for ``value``; ``style`` is the quoting of the value it replaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if style == '"':
        return json.dumps(value, ensure_ascii=False)
    plain_ok = (
        _PLAIN_SAFE.match(value)
        and value.lower() not in _RESERVED
        and not value.endswith((" ", ":"))
        and ": " not in value
        and " #" not in value
        and _loads_back(value)
    )
    return value if plain_ok else json.dumps(value, ensure_ascii=False)


def _loads_back(value: str) -> bool:
    try:
        return bool(yaml.safe_load(value) == value)
    except yaml.YAMLError:
        return False


@dataclass
class _Edit:
    start: int
    end: int
    text: str


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _line_end(text: str, index: int) -> int:
    """Index just past the end of the line holding ``index`` (after its newline)."""
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def _find(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _content_end(node: yaml.Node) -> int:
    """Index just past the last character of a node's own content.

    A block collection's end mark sits at the next token, past any comments that
    follow it; descend to the last scalar instead so inserts land right after it.
    """
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        key, value = node.value[-1]
        return max(int(key.end_mark.index), _content_end(value))
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _content_end(node.value[-1])
    return int(node.end_mark.index)


def _insert_point(text: str, mapping: yaml.MappingNode) -> int:
    """Where a new key goes: on the line after the mapping's last content."""
    end = _content_end(mapping)
    while end > 0 and text[end - 1] in " \t\r\n":
        end -= 1
    return _line_end(text, end)


def _render_block(path_tail: Path, value: Scalar, indent: int, step: int, nl: str) -> str:
    lines = []
    for depth, key in enumerate(path_tail[:-1]):
        lines.append(" " * (indent + depth * step) + f"{key}:")
    depth = len(path_tail) - 1
    lines.append(" " * (indent + depth * step) + f"{path_tail[-1]}: " + format_scalar(value, '"'))
    return nl.join(lines) + nl


def _plan(text: str, root: yaml.Node | None, path: Path, value: Scalar) -> _Edit:
    nl = _newline(text)
    if root is None:
        # An empty file (or only comments): append the whole path.
        block = _render_block(path, value, 0, 2, nl)
        prefix = "" if text == "" or text.endswith("\n") else nl
        return _Edit(len(text), len(text), prefix + block)
    if not isinstance(root, yaml.MappingNode):
        raise YamlEditError("the top level of the file is not a mapping of sections")
    node: yaml.MappingNode = root
    for depth, key in enumerate(path):
        found = _find(node, key)
        last = depth == len(path) - 1
        if found is None:
            return _insert_missing(text, node, path, depth, value, nl)
        key_node, value_node = found
        if last:
            if not isinstance(value_node, yaml.ScalarNode):
                raise YamlEditError(f"{'.'.join(path)} is not a single value")
            return _replace_scalar(text, key_node, value_node, value)
        if isinstance(value_node, yaml.ScalarNode) and value_node.value in ("", "~", "null"):
            # `section:` with nothing under it: put the keys below it.
            start = value_node.start_mark.index
            end = value_node.end_mark.index
            indent = key_node.start_mark.column + 2
            block = _render_block(path[depth + 1 :], value, indent, 2, nl)
            line_end = _line_end(text, key_node.end_mark.index)
            if end > start:  # an explicit null (~ or null): drop it
                return _Edit(start, line_end, nl + block)
            return _Edit(line_end, line_end, block if text[line_end - 1 : line_end] == "\n" else nl + block)
        if not isinstance(value_node, yaml.MappingNode):
            raise YamlEditError(f"{'.'.join(path[: depth + 1])} is not a section of keys")
        if value_node.flow_style and not value_node.value:
            # `section: {}`: replace the braces with the keys below the line.
            start, end = value_node.start_mark.index, value_node.end_mark.index
            line_end = _line_end(text, end)
            rest = text[end:line_end]
            if not rest.endswith("\n"):
                rest += nl
            indent = key_node.start_mark.column + 2
            block = _render_block(path[depth + 1 :], value, indent, 2, nl)
            if rest.strip():
                return _Edit(start, line_end, rest.lstrip(" ") + block)
            while start > 0 and text[start - 1] == " ":
                start -= 1
            return _Edit(start, line_end, rest.lstrip(" ") + block)
        if value_node.flow_style:
            raise YamlEditError(
                f"{'.'.join(path[: depth + 1])} is written in flow style ({{...}}); "
                "write it as one key per line to let cwhook edit it"
            )
        node = value_node
    raise YamlEditError("empty key path")  # pragma: no cover - path is never empty


def _replace_scalar(text: str, key_node: yaml.Node, node: yaml.ScalarNode, value: Scalar) -> _Edit:
    start, end = node.start_mark.index, node.end_mark.index
    style = node.style if node.style in ("'", '"') else None
    new = format_scalar(value, style)
    if node.style in ("|", ">"):
        # A block scalar's span runs over its following lines; keep one newline.
        return _Edit(start, end, new + _newline(text))
    if start == end:
        # `key:` with no value: the span is empty right after the colon.
        before = text[start - 1] if start > 0 else ""
        return _Edit(start, end, (" " if before == ":" else "") + new)
    return _Edit(start, end, new)


def _insert_missing(
    text: str, mapping: yaml.MappingNode, path: Path, depth: int, value: Scalar, nl: str
) -> _Edit:
    first_key = mapping.value[0][0] if mapping.value else None
    indent = first_key.start_mark.column if first_key is not None else 0
    # The step of nested keys: follow the file's own (first nested mapping), else 2.
    step = 2
    for key_node, child in mapping.value:
        if isinstance(child, yaml.MappingNode) and child.value:
            step = max(1, child.value[0][0].start_mark.column - key_node.start_mark.column)
            break
    if mapping.flow_style:
        raise YamlEditError(f"{'.'.join(path[:depth])} is written in flow style; cannot add keys")
    block = _render_block(path[depth:], value, indent, step, nl)
    at = _insert_point(text, mapping) if mapping.value else len(text)
    prefix = "" if at == 0 or text[at - 1] == "\n" else nl
    return _Edit(at, at, prefix + block)


def edit_yaml(text: str, changes: Mapping[Path, Scalar]) -> str:
    """Return ``text`` with each key path set to its value, every other byte kept.

    Edits are planned one at a time against the text as it is after the previous
    edit, so changes that insert keys into the same section stay well-formed.
    """
    for path, value in changes.items():
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            line, what = explain_yaml_error(exc, text)  # never PyYAML's own text: it quotes the file
            raise YamlEditError(f"not valid YAML{f' (line {line})' if line else ''}: {what}") from None
        edit = _plan(text, root, path, value)
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text
