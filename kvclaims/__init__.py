"""Resident KV Claims: a formally specified contract for LLM KV-cache reuse.

Subpackages: ``kvclaims.spec`` (the contract), ``kvclaims.model`` (lifecycle
machine, feasibility predicate, abstract pool), ``kvclaims.proofs`` (Z3),
``kvclaims.refimpl`` (the reference runtime).
"""

__version__ = "0.1.0"
