"""The spec's expression language: one parser, two back ends (Python values and Z3).

Guards, updates, outcome conditions and invariants in ``contract.toml`` are
strings in a small Python-syntax subset. Parsing once and interpreting the same
tree in Python and in Z3 is what keeps the executable model and the proofs
from drifting apart.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

__all__ = ["ExprError", "parse", "names", "evaluate", "to_z3", "to_python"]


class ExprError(ValueError):
    """An expression in the spec is malformed or uses an unsupported construct."""


_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.IfExp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Tuple,
)


@lru_cache(maxsize=None)
def parse(src: str) -> ast.Expression:
    """Parse and validate one expression; raises ExprError naming the construct."""
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse {src!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"{type(node).__name__} is not allowed in {src!r}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (bool, int, str)):
            raise ExprError(f"constant {node.value!r} is not allowed in {src!r}")
    return tree


def names(src: str) -> set[str]:
    """The variable names an expression reads."""
    return {n.id for n in ast.walk(parse(src)) if isinstance(n, ast.Name)}


def to_python(src: str) -> Callable[[Mapping[str, Any]], Any]:
    """Compile to a fast Python function of an environment mapping (the hot path)."""
    parse(src)  # validates
    used = sorted(names(src) - {"True", "False"})
    args = ", ".join(used)
    fn = eval(f"lambda {args}: ({src})", {"__builtins__": {}})  # noqa: S307 - validated subset
    return lambda env: fn(*(env[n] for n in used))


def evaluate(src: str, env: Mapping[str, Any]) -> Any:
    """Evaluate an expression with Python values (enum literals are plain strings)."""
    return to_python(src)(env)


@dataclass(frozen=True)
class Z3Env:
    """How names and enum literals map to Z3 terms."""

    terms: Mapping[str, Any]  # variable name -> z3 term
    literal: Callable[[Any, str], Any]  # (z3 sort or None, literal text) -> z3 constant


def to_z3(src: str, env: Z3Env, expected_sort: Any = None) -> Any:
    """Compile an expression to a Z3 term; string literals take the sort of their context."""
    import z3

    def is_literal(node: ast.AST) -> bool:
        return isinstance(node, ast.Tuple) or (isinstance(node, ast.Constant) and isinstance(node.value, str))

    def context_sort(nodes: list[ast.AST]) -> Any:
        """The sort of the first operand that is not an enum literal (or a tuple of them)."""
        for node in nodes:
            if not is_literal(node):
                return go(node).sort()
        return None

    def lit(node: ast.AST, sort: Any) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return env.literal(sort, node.value)  # sort None: the one enum that has it
        return go(node, sort)

    def go(node: ast.AST, sort: Any = None) -> Any:
        if isinstance(node, ast.Expression):
            return go(node.body, sort)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                return z3.BoolVal(node.value)
            if isinstance(node.value, int):
                return z3.IntVal(node.value)
            return lit(node, sort)
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):
                return z3.BoolVal(node.id == "True")
            if node.id not in env.terms:
                raise ExprError(f"unknown name {node.id!r} in {src!r}")
            return env.terms[node.id]
        if isinstance(node, ast.BoolOp):
            parts = [go(v) for v in node.values]
            return z3.And(*parts) if isinstance(node.op, ast.And) else z3.Or(*parts)
        if isinstance(node, ast.UnaryOp):
            inner = go(node.operand)
            return z3.Not(inner) if isinstance(node.op, ast.Not) else -inner
        if isinstance(node, ast.BinOp):
            left, right = go(node.left), go(node.right)
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node, ast.IfExp):
            if sort is None:
                sort = context_sort([node.body, node.orelse])
            return z3.If(go(node.test), lit(node.body, sort), lit(node.orelse, sort))
        if isinstance(node, ast.Compare):
            terms = []
            left = lit(node.left, context_sort([node.left, *node.comparators]))
            for op, right_node in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right_node, ast.Tuple):
                        raise ExprError(f"`in` needs a literal tuple in {src!r}")
                    member = z3.Or(*[left == lit(e, left.sort()) for e in right_node.elts])
                    terms.append(member if isinstance(op, ast.In) else z3.Not(member))
                    continue
                right = lit(right_node, left.sort())
                terms.append(
                    {
                        ast.Eq: lambda a, b: a == b,
                        ast.NotEq: lambda a, b: a != b,
                        ast.Lt: lambda a, b: a < b,
                        ast.LtE: lambda a, b: a <= b,
                        ast.Gt: lambda a, b: a > b,
                        ast.GtE: lambda a, b: a >= b,
                    }[type(op)](left, right)
                )
                left = right
            return z3.And(*terms) if len(terms) > 1 else terms[0]
        raise ExprError(f"{type(node).__name__} is not supported in {src!r}")

    return go(parse(src), expected_sort)
