"""Reading a policy document: YAML that refuses what PyYAML would silently accept.

PyYAML keeps the last of two equal keys without a word; in a policy that is
how a field gets two owners by accident. :func:`load` walks the node tree
first and reports every repeated key with its path.
"""

from __future__ import annotations

from typing import Any

import yaml

from libs.policy.problems import Problem

# libyaml's safe loader parses a 1 MiB document in a fraction of PyYAML's time; PyYAML's own is the fallback.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64  # a policy is a few levels deep; more is a mistake or an attack
MAX_NODES = 100_000  # what aliases may expand to, all told (a "billion laughs" stops here)
MAX_PROBLEMS = 50  # a listing of problems a person can read, and that fits in an error's details


class _TooLarge(Exception):
    """The document is too deep or expands to too much to be read safely."""


def _walk(node: yaml.Node, path: str, problems: list[Problem], on_path: set[int], budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(f"expands to more than {MAX_NODES} values (through YAML aliases?)")
    if len(on_path) >= MAX_DEPTH:
        raise _TooLarge(f"nests deeper than {MAX_DEPTH} levels at {path or 'the top'}")
    if id(node) in on_path:
        raise _TooLarge(f"{path or 'the top'} refers to itself through a YAML alias")
    on_path.add(id(node))
    try:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)[:200]
                child = f"{path}.{key}" if path else key
                if key in seen:
                    problems.append(
                        Problem(
                            child, f"appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}); keep one"
                        )
                    )
                else:
                    seen[key] = key_node.start_mark.line + 1
                _walk(value_node, child, problems, on_path, budget)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                _walk(item, f"{path}[{index}]", problems, on_path, budget)
    finally:
        on_path.discard(id(node))


def load(text: str) -> tuple[Any, list[Problem]]:
    """The document as Python data, and the problems found while reading it."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        return None, [Problem("(document)", f"not valid YAML at {where}: {getattr(error, 'problem', error)}")]
    except RecursionError:
        return None, [Problem("(document)", f"nests deeper than {MAX_DEPTH} levels")]
    if root is None:
        return None, [Problem("(document)", "is empty")]
    problems: list[Problem] = []
    try:
        _walk(root, "", problems, set(), [MAX_NODES])
    except _TooLarge as refused:
        return None, [Problem("(document)", str(refused))]
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], Problem("(document)", f"and {len(problems) - MAX_PROBLEMS} more")]
    try:
        return yaml.load(text, Loader=_LOADER), problems  # the safe loader, in C where libyaml exists
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as error:  # e.g. a 5,000-digit number
        return None, [Problem("(document)", f"a value cannot be read: {str(error)[:200]}")]
