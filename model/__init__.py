"""The executable model: lifecycle machine, feasibility predicate, abstract pool (the oracle)."""
