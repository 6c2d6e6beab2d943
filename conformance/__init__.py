"""The conformance toolkit that judges any runtime against the contract: the runtime
adapter protocol, the trace checker, the litmus and rejection scenarios, the stateful
(model-based) machine and its strategies, `fuzz`, `conform` and the pytest plugin.

It knows no runtime: a runtime is named by `MODULE:CLASS` (the reference runtime and
vLLM are shortcuts resolved by name, never imported here).
"""
