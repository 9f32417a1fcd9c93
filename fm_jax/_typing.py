"""Shared jaxtyping aliases (one place, as in diffrax's `_custom_types`)."""

from __future__ import annotations

from typing import Any

from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

Scalar = Float[Array, ""]
ScalarLike = Float[ArrayLike, ""]
Key = PRNGKeyArray
State = PyTree[Float[Array, "..."]]
Params = PyTree[Any]

__all__ = ["Array", "ArrayLike", "Float", "Int", "Key", "Params", "PyTree", "Scalar", "ScalarLike", "State"]
