"""Reading a policy document: YAML that refuses what PyYAML would silently accept.

PyYAML keeps the last of two equal keys without a word; in a policy that is
how a field gets two owners by accident. :func:`load` walks the node tree
first and reports every repeated key with its path.
"""

from __future__ import annotations

from typing import Any

import yaml

from libs.policy.problems import Problem


def _walk(node: yaml.Node, path: str, problems: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                problems.append(
                    Problem(child, f"appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}); keep one")
                )
            else:
                seen[key] = key_node.start_mark.line + 1
            _walk(value_node, child, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", problems)


def load(text: str) -> tuple[Any, list[Problem]]:
    """The document as Python data, and the problems found while reading it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        return None, [Problem("(document)", f"not valid YAML at {where}: {getattr(error, 'problem', error)}")]
    if root is None:
        return None, [Problem("(document)", "is empty")]
    problems: list[Problem] = []
    _walk(root, "", problems)
    return yaml.safe_load(text), problems
