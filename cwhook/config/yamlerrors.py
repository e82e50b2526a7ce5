"""YAML mistakes in words a person can act on (pure, no I/O).

PyYAML's own messages name the parser's state (``expected <block end>, but found
'<block mapping start>'``) and the place where it gave up, which is often a line
after the real mistake. This module names the line to fix and how: tabs,
indentation that matches no level above, a missing colon, an unclosed quote or
bracket. It also finds what PyYAML accepts silently: duplicate keys.

No explanation quotes a secret (docs/configuration.md, "Secrets in messages"): a line whose key is
named like one (``token``, ``client_secret``, ``access_token``, ``refresh_token``, in any
section or account) is shown with its value masked, a line that belongs to no key shows
only its first characters, and what PyYAML quotes from the file (an alias, an anchor, a
tag) is cut to its first characters too.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

import yaml

KeyPath = tuple[str, ...]

_KEY = re.compile(r"""^(?:- +)?("[^"]*"|'[^']*'|[^\s#'"\[{&*!|>%@`-][^:]*?|-[^\s:][^:]*?)\s*:(?:\s|$)""")
TAB_FIX = "YAML does not allow tabs for indentation: use spaces to indent"

# --- not quoting secrets ------------------------------------------------------------

MASK = "***"
FEW = 3  # the most characters of a value no key vouches for that an explanation quotes
# The first word of a raw line, whether or not a colon follows it (`refresh_token abc` too).
_HEAD = re.compile(r"""^(?P<lead>-\s+)?(?P<q>["']?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,31})(?P=q)(?P<sep>\s*:|\s+|$)""")
# Keys whose value is secret: any name with `token` or `secret` in it (a misspelt one too).
_SECRET_NAME = re.compile(r"token|secret", re.IGNORECASE)
# Keys whose lines (`- item`) may be quoted in full: lists of user names and server ids.
LIST_KEYS = frozenset({"users", "username_whitelist", "server_uuid_whitelist"})
# A word that looks like a credential: 16+ characters of the alphabets tokens are written in,
# letters and digits mixed, or a long one in mixed case (see _looks_like_credential).
_CREDENTIAL = re.compile(r"[A-Za-z0-9_+/=~.-]{16,}")
# The names of the schema's keys (cwhook.config.schema registers them): a line that starts with one
# belongs to that key even when its colon is missing (`host x`), so it may be quoted.
KEY_NAMES: set[str] = set()


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _looks_like_credential(word: str) -> bool:
    """Letters and digits mixed, or a long run of mixed case (a token that drew no digit)."""
    if "://" in word:
        return False
    mixed_case = len(word) >= 24 and any(c.isupper() for c in word) and any(c.islower() for c in word)
    return mixed_case or (any(c.isdigit() for c in word) and any(c.isalpha() for c in word))


def _mask_credentials(text: str) -> str:
    return _CREDENTIAL.sub(lambda m: few(m.group(0)) if _looks_like_credential(m.group(0)) else m.group(0), text)


def safe_name(name: str) -> str:
    """A key as a message may name it: one that looks like a credential (a token pasted as a
    key) is cut to a few characters."""
    return few(name) if _CREDENTIAL.fullmatch(name) and _looks_like_credential(name) else name


def few(text: str) -> str:
    """At most FEW characters of ``text`` (and an ellipsis when there were more)."""
    return text if len(text) <= FEW + 2 else text[:FEW] + "…"


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def clip_quoted(problem: str) -> str:
    """PyYAML's own words with what they quote from the file cut to a few characters
    (``found undefined alias '82al_63YV...'``); its token names (``'<block end>'``) stay."""
    def clip(m: re.Match[str]) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        if re.fullmatch(r"<[a-z ]+>|\\.|\S", inner):
            return m.group(0)
        q = m.group(0)[0]
        return f"{q}{few(inner)}{q}"
    return _QUOTED.sub(clip, problem)


def duplicate_keys(node: yaml.Node | None, prefix: KeyPath = ()) -> list[tuple[KeyPath, int, int]]:
    """(key path, line, line of the first occurrence) for every repeated key, in file order."""
    found: list[tuple[KeyPath, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                found.append(((*prefix, key), line, seen[key]))
            else:
                seen[key] = line
            found.extend(duplicate_keys(value_node, (*prefix, key)))
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found.extend(duplicate_keys(item, prefix))
    return found


def sections(node: yaml.Node | None, prefix: KeyPath = ()) -> frozenset[KeyPath]:
    """Key paths whose value is a mapping with at least one key (``()`` not included)."""
    out: set[KeyPath] = set()
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and isinstance(value_node, yaml.MappingNode) \
                    and value_node.value:
                path = (*prefix, str(key_node.value))
                out.add(path)
                out |= sections(value_node, path)
    return frozenset(out)


def key_paths(node: yaml.Node | None, prefix: KeyPath = ()) -> frozenset[KeyPath]:
    """Every key path of the YAML mappings in ``node`` (list items are values, not keys)."""
    out: set[KeyPath] = set()
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = (*prefix, str(key_node.value))
                out.add(path)
                out |= key_paths(value_node, path)
    return frozenset(out)


# --- syntax errors ------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    number: int  # 1-based
    indent: int
    code: str  # without indentation and trailing comment
    owner: str | None = None  # for a line with no key of its own: the key of the line that opened it

    @property
    def key(self) -> str | None:
        m = _KEY.match(self.code)
        return m.group(1).strip("\"'") if m else None

    @property
    def opens_block(self) -> bool:
        """Ends with `key:` (a section or list follows), or is a `- ` list item."""
        return self.code.endswith(":") or self.code == "-" or self.code.startswith("- ")


def _strip_comment(text: str) -> str:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'" and (i == 0 or text[i - 1] in " :[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _content_lines(text: str) -> list[_Line]:
    """Lines that carry YAML structure: no blanks, comments or block-scalar bodies."""
    out: list[_Line] = []
    block_scalar_at: int | None = None  # indent of the key that opened a | or > scalar
    for number, line in enumerate(text.splitlines(), 1):
        body = line.lstrip(" ")
        if not body.strip() or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if block_scalar_at is not None:
            if indent > block_scalar_at:
                continue
            block_scalar_at = None
        code = _strip_comment(body)
        if code.startswith("---") or code.startswith("..."):
            continue
        opener = next((o for o in reversed(out) if o.indent < indent), None)
        if opener is None and code.startswith("-"):  # `key:` then `- item` at the same indentation
            opener = next((o for o in reversed(out) if o.indent == indent and not o.code.startswith("-")), None)
        owner = _HEAD.match(opener.code) if opener is not None else None
        out.append(_Line(number, indent, code, owner.group("key") if owner else None))
        if code.endswith(("|", ">", "|-", ">-", "|+", ">+")):
            block_scalar_at = indent
    return out


def _spaces(n: int) -> str:
    return f"{n} space" if n == 1 else f"{n} spaces"


def excerpt(code: str, owner: str | None = None) -> str:
    """A line of the file as an explanation may show it: a secret's value masked, a line no
    key vouches for cut to a few characters (``owner``: the key the line sits under)."""
    head = _HEAD.match(code)
    if head is not None and is_secret_key(head.group("key")):
        sep = ":" if ":" in head.group("sep") else ""
        return f"{head.group('lead') or ''}{head.group('key')}{sep} {MASK}"
    keyed = head is not None and (":" in head.group("sep") or head.group("key") in KEY_NAMES)
    if not keyed and owner is not None and is_secret_key(owner):  # the rest of a secret's value
        return MASK
    listed = code.startswith("-") and owner in LIST_KEYS
    if not keyed and not listed:
        return few(code)
    text = _mask_credentials(code)
    return text if len(text) <= 40 else text[:37] + "..."


def _quote(line: _Line) -> str:
    return f"`{excerpt(line.code, line.owner)}`"


def _key_name(line: _Line | None) -> str | None:
    key = line.key if line is not None else None
    return None if key is None else safe_name(key)


def indentation_mistake(text: str) -> tuple[int, str] | None:
    """The first line whose indentation (or missing colon) breaks the structure, in words."""
    lines = _content_lines(text)
    if not lines or _unbalanced(text):
        return None
    found = [f for f in (_bad_indent(lines), _missing_colon(lines)) if f is not None]
    return min(found) if found else None


def _bad_indent(lines: list[_Line]) -> tuple[int, str] | None:
    # How far this file indents a section's keys under it, each opener -> its first key.
    openings = [(a.number, b.indent - a.indent) for a, b in itertools.pairwise(lines)
                if b.indent > a.indent and a.opens_block]

    def step(besides: _Line) -> int:
        """The file's usual indentation step, not counting the section under judgement."""
        steps = Counter(d for n, d in openings if n != besides.number)
        return steps.most_common(1)[0][0] if steps else 2

    # Open levels, outermost first: (indent, the line that opened it, lines at this level).
    levels: list[tuple[int, _Line | None, list[_Line]]] = [(lines[0].indent, None, [])]
    prev: _Line | None = None
    for line in lines:
        top_indent, _, members = levels[-1]
        if line.indent > top_indent:
            if prev is not None and not prev.opens_block:
                opener = levels[-1][1]
                if members == [prev] and opener is not None and line.indent == opener.indent + step(opener):
                    # The section's first key is the odd one out: blame it, not the keys after it.
                    return prev.number, (
                        f"{_quote(prev)} is indented {_spaces(prev.indent)}, but the next key of "
                        f"`{_key_name(opener)}` (line {line.number}) is indented {_spaces(line.indent)}: "
                        "indent the keys of a section alike")
                return line.number, (
                    f"{_quote(line)} is indented more than line {prev.number} "
                    f"above it, which already has a value: indent it like the other keys of its section")
            levels.append((line.indent, prev, [line]))
        elif line.indent < top_indent:
            popped = levels.pop()
            while levels and levels[-1][0] > line.indent:
                popped = levels.pop()
            outer = levels[-1][0] if levels else 0
            if not levels or outer != line.indent:
                inner_indent, opener, inner = popped
                section = f"`{_key_name(opener)}`" if _key_name(opener) else "the section"
                if len(inner) == 1 and opener is not None and line.indent == outer + step(opener):
                    # One over-indented line followed by keys at the usual step: blame that line.
                    lone = inner[0]
                    return lone.number, (
                        f"{_quote(lone)} is indented {_spaces(inner_indent)}, "
                        f"but the next key of {section} (line {line.number}) is indented "
                        f"{_spaces(line.indent)}: indent the keys of a section alike")
                return line.number, (
                    f"{_quote(line)} is indented {_spaces(line.indent)}, but the lines "
                    f"under {section} above it are indented {_spaces(inner_indent)} and the enclosing keys "
                    f"{_spaces(outer)}: indent it exactly like the other lines of the section it belongs to")
            levels[-1][2].append(line)
        else:
            members.append(line)
        prev = line
    return None


def _missing_colon(lines: list[_Line]) -> tuple[int, str] | None:
    """A line among the keys of a section that is not `key: value`."""
    for i, line in enumerate(lines):
        if line.key is not None or line.code.startswith(("-", "[", "{")):
            continue
        neighbours = lines[max(0, i - 1):i] + lines[i + 1:i + 2]
        if any(n.indent == line.indent and n.key is not None for n in neighbours):
            return line.number, (f"{_quote(line)} is not `key: value`: "
                                 "a colon (followed by a space) is missing?")
    return None


def _unbalanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
    return depth != 0


def explain_yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """(line to fix, what is wrong and what to do) for a PyYAML error on ``text``."""
    line, words, _ = explain(exc, text)
    return line, words


def explain(exc: yaml.YAMLError, text: str) -> tuple[int | None, str, str]:
    """(line to fix, what is wrong and what to do, a problem code) for a PyYAML error on ``text``.

    The code (``yaml_tab``, ``yaml_indentation``...) is what /healthz shows: never the words,
    which quote the file."""
    mark = getattr(exc, "problem_mark", None)
    problem = clip_quoted(str(getattr(exc, "problem", None) or str(exc).splitlines()[0]))
    context = clip_quoted(str(getattr(exc, "context", None) or ""))
    context_mark = getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    if "'\\t'" in problem or (line is not None and _tab_indented(_line(text, line))):
        tab_line = line if line is not None and "\t" in _line(text, line) else _first_tab_line(text)
        tab_line = tab_line or line
        col = _line(text, tab_line).find("\t") + 1 if tab_line else column
        return tab_line, f"a tab character (column {col}); {TAB_FIX}", "yaml_tab"
    if "tab" in problem.lower():
        return line, f"{problem}; {TAB_FIX}", "yaml_tab"
    structural = ("expected <block end>", "mapping values are not allowed", "could not find expected ':'",
                  "expected <block mapping start>", "did not find expected key",
                  "did not find expected '-' indicator")
    if any(s in problem or s in context for s in structural):
        found = indentation_mistake(text)
        if found is not None and (line is None or found[0] <= line):
            code = "yaml_missing_colon" if "is not `key: value`" in found[1] else "yaml_indentation"
            return found[0], found[1], code
    opened = context_mark.line + 1 if context_mark is not None else line
    if "quoted scalar" in context:
        return opened, (f"the quoted value starting on line {opened} is never closed: "
                        "add the closing quote (inside \"...\" write \\\" for a quote)"), "yaml_unclosed_quote"
    if "flow sequence" in context:
        return (opened, f"the [ list starting on line {opened} is not closed: end it with ] on the same line",
                "yaml_unclosed_list")
    if "flow mapping" in context:
        return (opened, f"the {{ }} mapping starting on line {opened} is not closed: end it with }}",
                "yaml_unclosed_mapping")
    if "that cannot start any token" in problem:
        return line, f"{problem} (column {column}): put the value in quotes", "yaml_bad_character"
    if "found undefined alias" in problem or "found duplicate anchor" in problem:
        return line, f"{problem}: a value starting with * or & must be put in quotes", "yaml_alias"
    if "could not determine a constructor for the tag" in problem:
        return line, f"{problem}: a value starting with ! must be put in quotes", "yaml_tag"
    words = f"{problem} ({context})" if context else problem
    return line, (f"{words}: check the indentation (spaces only, the same for every key of a section), "
                  "the colons and the quotes around that line"), "yaml_syntax"


def _line(text: str, number: int) -> str:
    lines = text.splitlines()
    return lines[number - 1] if 0 < number <= len(lines) else ""


def _tab_indented(line: str) -> bool:
    return "\t" in line[: len(line) - len(line.lstrip(" \t"))]


def _first_tab_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if "\t" in line and not line.lstrip(" \t").startswith("#"):
            return number
    return None
