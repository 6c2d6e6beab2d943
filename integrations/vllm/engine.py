"""A real vLLM engine in this process, with the integration switched on (or stock),
driven request by request and step by step.

This is the Python face of the integration for probes, tests and runtime
adapters: requests carry their claim operations as ``extra_args`` exactly as
users send them, and in-process access to the scheduler gives the direct claim
calls, the operator actions and the trace. Engine settings are the paper's
probe pool by default: 80 usable blocks of 32 tokens (81 with vLLM's null block).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kvclaims.errors import DuplicateId, InvalidInput, UnknownId
from kvclaims.vllm.model_dir import tiny_model_dir
from kvclaims.vllm.xargs import ANONYMOUS, ClaimOp, to_xargs

if TYPE_CHECKING:  # the scheduler imports vLLM, which this module imports only when an engine starts
    from kvclaims.vllm.scheduler import ClaimsScheduler

# Single process (so the scheduler is reachable), a small CPU KV space, no model hub,
# vLLM's logs on stderr (stdout is the caller's), and the caller's request ids in the
# trace (vLLM would add a random suffix; `submit_request` keeps ids unique itself).
ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    "VLLM_DISABLE_REQUEST_ID_RANDOMIZATION": "1",
}
SCHEDULER = "kvclaims.vllm.scheduler.ClaimsScheduler"
# Every in-process engine, kept until the process exits. vLLM's in-process engines share
# process-wide parallel state, and an engine's teardown (when it is garbage collected)
# destroys it under the others ("pipeline model parallel group is not initialized").
# An engine here is a small tiny-model pool, so keeping it costs little.
_ENGINES: list = []


@dataclass
class Result:
    """What a finished request reports back to its client."""

    request_id: str
    finish_reason: str | None
    stop_reason: str | int | None
    num_cached_tokens: int
    kvclaims: dict[str, Any] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)  # the tokens it generated
    logprobs: list[float] = field(default_factory=list)  # of each generated token (greedy: its best)
    steps: int = 0  # engine steps from its submission to its end

    @property
    def refused(self) -> bool:
        return "refused" in self.kvclaims


def host_tier(cpu_bytes: int, load_failure_policy: str = "recompute") -> dict[str, Any]:
    """vLLM's ``kv_transfer_config`` that switches the claims host tier on
    (`kvclaims.vllm.hosttier`): `cpu_bytes` of host memory for block copies (vLLM sizes
    the tier from it), and what vLLM does with a request whose load fails its check
    ("recompute": the bad copy is dropped and the request recomputes; "fail": it ends
    with an error)."""
    module = "kvclaims.vllm.hosttier"
    return {
        "kv_connector": "ClaimsOffloadingConnector",
        "kv_connector_module_path": module,
        "kv_role": "kv_both",
        "kv_load_failure_policy": load_failure_policy,
        "kv_connector_extra_config": {
            "spec_name": "ClaimsHostSpec",
            "spec_module_path": module,
            "cpu_bytes_to_use": cpu_bytes,
        },
    }


def engine_kwargs(
    *,
    integration: bool = True,
    U: int = 80,
    B: int = 32,
    max_model_len: int = 2560,
    scheduler: str = SCHEDULER,
    model: str | None = None,
    async_scheduling: bool = False,
    host_bytes: int = 0,
    load_failure_policy: str = "recompute",
    **kvclaims: Any,
) -> dict[str, Any]:
    """``LLM``/``EngineArgs`` keyword arguments for the tiny model (or another local `model`
    directory). Any prompt's prefill is one engine step (the batch budget is the model length).
    vLLM turns `async_scheduling` off on CPU (`vllm/platforms/cpu.py`) unless a test process
    undoes that (`tests/test_vllm_async.py`); where it stays on, the integration's scheduler
    is `AsyncClaimsScheduler`. `host_bytes` > 0 switches the claims host tier on (`host_tier`)."""
    kw: dict[str, Any] = dict(
        model=model or str(tiny_model_dir()),
        skip_tokenizer_init=True,
        enable_prefix_caching=True,
        block_size=B,
        num_gpu_blocks_override=U + 1,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_model_len,
        dtype="float32",
        enforce_eager=True,
        async_scheduling=async_scheduling,
    )
    if host_bytes:
        kw["kv_transfer_config"] = host_tier(host_bytes, load_failure_policy)
    if integration:  # (an engine in this process keeps its trace's records: `VllmEngine.trace`)
        kw.update(scheduler_cls=scheduler, additional_config={"kvclaims": {"records": True, **kvclaims}})
    elif kvclaims:
        raise InvalidInput(f"kvclaims settings {sorted(kvclaims)} given without the integration")
    return kw


def keep_async_on_cpu() -> None:
    """vLLM turns async scheduling off on its CPU platform (`vllm/platforms/cpu.py`,
    `CpuPlatform.check_and_update_config`); after this call, in this process, an engine keeps
    it as asked, so the integration meets vLLM's `AsyncScheduler` as it does on a GPU, where
    async scheduling is the default. Idempotent; it changes nothing for an engine that does
    not ask for async scheduling."""
    from vllm.platforms import current_platform

    platform = type(current_platform)
    stock = platform.__dict__["check_and_update_config"]
    if getattr(stock.__func__, "_kvclaims_keeps_async", False):
        return

    def keep_async(cls, vllm_config):
        wanted = vllm_config.scheduler_config.async_scheduling
        stock.__func__(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = wanted

    keep_async._kvclaims_keeps_async = True  # type: ignore[attr-defined]
    setattr(platform, "check_and_update_config", classmethod(keep_async))


class VllmEngine:
    def __init__(self, *, integration: bool = True, **settings: Any) -> None:
        for key, value in ENV.items():
            os.environ.setdefault(key, value)
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise InvalidInput("VllmEngine needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process scheduler)")
        from vllm import EngineArgs, LLMEngine

        if settings.get("async_scheduling"):
            keep_async_on_cpu()

        self.integration = integration
        args = EngineArgs(**engine_kwargs(integration=integration, **settings))
        config = args.create_engine_config()
        if integration:  # the scheduler's own checks, before the model loads rather than after
            from kvclaims.vllm.scheduler import settings as checked

            checked(config)
        from vllm.distributed.kv_transfer import kv_transfer_state

        # vLLM keeps the worker's KV connector in one process-wide slot and builds it only
        # while the slot is empty; each engine here keeps its own and puts it in place
        # whenever it steps (`step`), so engines with and without a host tier coexist.
        kv_transfer_state._KV_CONNECTOR_AGENT = None
        self.engine = LLMEngine.from_vllm_config(config, disable_log_stats=args.disable_log_stats)
        self._kv_agent = kv_transfer_state._KV_CONNECTOR_AGENT
        _ENGINES.append(self.engine)
        from vllm.v1.engine.core_client import InprocClient

        core = self.engine.engine_core
        assert isinstance(core, InprocClient), "VLLM_ENABLE_V1_MULTIPROCESSING=0 gives an in-process engine core"
        self.scheduler = core.engine_core.scheduler
        self._core = core.engine_core  # the engine core, in this process (its worker too)
        self.B = self.engine.vllm_config.cache_config.block_size
        self.internal: dict[str, str] = {}  # our request id -> vLLM's internal one
        self.steps = 0  # engine steps so far
        self.submitted: dict[str, int] = {}  # request -> the step count when it was submitted
        self.results: dict[str, Result] = {}

    # ------------------------------------------------------------------ requests
    def submit_request(
        self,
        request_id: str,
        tokens: Sequence[int],
        *,
        max_tokens: int = 1,
        ignore_eos: bool = False,
        extra_args: dict[str, Any] | None = None,
        **ops: Any,
    ) -> None:
        """Queue a prompt; `ops` are `to_xargs` keywords (claim=..., release=..., no_admit=...),
        or `extra_args` is passed to vLLM as is (the engine validates it)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if request_id in self.internal:
            raise DuplicateId(f"request {request_id!r} already exists")
        if extra_args is not None and ops:
            raise InvalidInput("give claim operations as keywords or as extra_args, not both")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            logprobs=0,  # the generated token's own
            ignore_eos=ignore_eos,
            extra_args=extra_args if extra_args is not None else to_xargs(**ops) or None,
        )
        self.internal[request_id] = self.engine.add_request(
            request_id, TokensPrompt(prompt_token_ids=list(tokens)), params
        )
        self.submitted[request_id] = self.steps

    def step(self) -> list[Result]:
        """One engine step; returns the requests that finished in it."""
        done = []
        from vllm.distributed.kv_transfer import kv_transfer_state
        from vllm.outputs import RequestOutput

        kv_transfer_state._KV_CONNECTOR_AGENT = self._kv_agent
        self.steps += 1
        for out in self.engine.step():
            assert isinstance(out, RequestOutput), "a generative model's engine returns RequestOutputs"
            if out.finished:
                c = out.outputs[0]
                r = Result(
                    out.request_id,
                    c.finish_reason,
                    c.stop_reason,
                    out.num_cached_tokens or 0,
                    (out.kv_transfer_params or {}).get("kvclaims", {}),
                    list(c.token_ids),
                    [d[t].logprob for t, d in zip(c.token_ids, c.logprobs or []) if d is not None],
                    self.steps - self.submitted.get(out.request_id, self.steps),
                )
                self.results[out.request_id] = r
                done.append(r)
        return done

    def finish(self, request_id: str, max_steps: int = 10_000) -> Result:
        """Step until `request_id` has finished; its result."""
        if request_id not in self.internal:
            raise UnknownId(f"no request {request_id!r}")
        for _ in range(max_steps):
            if request_id in self.results:
                return self.results[request_id]
            self.step()
        raise TimeoutError(f"request {request_id!r} did not finish in {max_steps} steps")

    def drain(self, max_steps: int = 100) -> int:
        """Under async scheduling a step's output is processed by a later step: step until
        no step that computes anything is in flight; returns the steps taken (0 without
        async scheduling)."""
        queue = self._core.batch_queue
        for n in range(max_steps):
            if not queue or not any(out.total_num_scheduled_tokens for _, out, _ in queue):
                return n
            self.step()
        raise TimeoutError(f"steps still in flight after {max_steps} steps")

    def settle(self, max_steps: int = 100) -> int:
        """Step while the host tier has a transfer in flight (it stores a block one step
        after computing it; live requests also advance); returns the steps taken."""
        for n in range(max_steps):
            if not self._claims().transfers_pending():
                return n
            self.step()
        raise TimeoutError(f"the host tier still had transfers after {max_steps} steps")

    def run(self, request_id: str, tokens: Sequence[int], **kw: Any) -> Result:
        self.submit_request(request_id, tokens, **kw)
        return self.finish(request_id)

    def abort(self, request_id: str) -> None:
        if request_id not in self.internal:
            raise UnknownId(f"no request {request_id!r}")
        self.engine.abort_request([self.internal[request_id]], internal=True)

    def clear(self, max_steps: int = 100) -> None:
        """Abort every request still live and forget all ids: a fresh start for the next user.
        Steps until the scheduler has nothing left (finished ids reported to the connector,
        transfers complete), so a later request may reuse an id."""
        self.engine.abort_request(list(self.internal.values()), internal=True)
        self.internal.clear()
        self.submitted.clear()
        for _ in range(max_steps):
            if not self._core.scheduler.has_requests():
                self.results.clear()
                return
            self.step()
        raise TimeoutError(f"the engine still had work after {max_steps} steps")

    # ------------------------------------------------------------------ claims and operators
    @property
    def claims(self) -> ClaimsScheduler:
        """The engine's claims scheduler (raises InvalidInput on stock vLLM)."""
        return self._claims()

    def _claims(self) -> ClaimsScheduler:
        from kvclaims.vllm.scheduler import ClaimsScheduler

        if not self.integration:
            raise InvalidInput("stock vLLM has no claims: build the engine with integration=True")
        assert isinstance(self.scheduler, ClaimsScheduler), type(self.scheduler)
        return self.scheduler

    def submit_claim(self, claim_id: str, tokens: Sequence[int], *, tenant: str = ANONYMOUS, **terms: Any) -> str:
        """Claim `tokens`, a whole-block prefix, for `tenant` directly; `terms` as ClaimOp
        (strength, ttl, ...)."""
        return self._claims().submit_claim(ClaimOp(claim_id, **terms), list(tokens), tenant)

    def release_claim(self, claim_id: str, *, tenant: str = ANONYMOUS) -> None:
        self._claims().release_claim(claim_id, tenant)

    def claim_state(self, claim_id: str) -> str:
        return self._claims().book.get(claim_id).state

    def reset_cache(self) -> bool:
        return self.engine.reset_prefix_cache()

    def evict_blocks(self, tokens: Sequence[int]) -> None:
        """Report the resident blocks of `tokens`' chain invalid (a connector's failed load)."""
        s = self._claims()
        blocks = [s.pool.block(h) for h in s.pool.chain(list(tokens))]
        s.evict_blocks({b.block_id for b in blocks if b is not None})

    def inject_device_fault(self, block_ids: set[int]) -> None:
        """Corrupt the KV of these device blocks in every layer of the model runner's cache
        (in process: the worker is this process), then report them to the scheduler as a
        device fault (`ClaimsScheduler.fail_blocks`)."""
        s = self._claims()
        runner = self._core.model_executor.driver_worker.worker.model_runner
        ids = sorted(block_ids)
        for layer in runner.kv_caches:
            layer[ids] += 1.0
        s.fail_blocks(set(ids))

    @property
    def trace(self) -> list[dict[str, Any]]:
        return self._claims().trace.records
