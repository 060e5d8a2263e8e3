"""Static checks on notebook code that the structure tests run: SQL built with f-strings."""

from __future__ import annotations

import ast
import re

# SQL text starts with a keyword in capitals, or has one of SQL's unmistakable shapes in any case.
SQL_START = re.compile(r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|TRUNCATE|COPY|WITH"
                       r"|WHERE|AND|OR|ORDER BY|GROUP BY|VALUES|SET|LIMIT|FROM|JOIN)\b")
SQL_SHAPE = re.compile(r"\bselect\b.+\bfrom\b|\binsert\s+into\b|\bdelete\s+from\b|\bupdate\s+\S+\s+set\b"
                       r"|\b(drop|create|alter|truncate)\s+(table|role|database|index|schema)\b", re.IGNORECASE | re.DOTALL)
WRONG_EXAMPLE = "wrong-example"


def python_source(cell_source: str) -> str:
    """Cell source with IPython-only lines (`!cmd`, `%magic`) blanked so ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in cell_source.splitlines())


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ""


def string_built_sql(source: str) -> list[str]:
    """SQL assembled from values by f-string, str.format or %: each finding as 'line N: ...'.

    psycopg.sql composition (`sql.SQL("...").format(...)`) is the safe way and is not reported.
    """
    tree = ast.parse(python_source(source))
    found = []
    for node in ast.walk(tree):
        text, how = "", ""
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            text, how = _literal_text(node), "f-string"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
              and isinstance(node.func.value, ast.Constant)):
            text, how = _literal_text(node.func.value), "str.format"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
            text, how = _literal_text(node.left), "% formatting"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            parts = [node.left, node.right]
            if any(_literal_text(p) for p in parts) and not all(isinstance(p, ast.Constant) for p in parts):
                text, how = " ".join(_literal_text(p) for p in parts), "concatenation"
        if text and (SQL_START.search(text) or SQL_SHAPE.search(text)):
            found.append(f"line {node.lineno}: SQL built by {how}: {text.strip()[:60]!r}")
    return found
