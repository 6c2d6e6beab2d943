"""The vLLM scheduler with resident KV claims enforced: pass ``scheduler_cls`` to switch it on.

    LLM(..., scheduler_cls="kvclaims.vllm.scheduler.ClaimsScheduler",
        additional_config={"kvclaims": {"reserve": 0, "trace": "trace.jsonl"}})

It subclasses vLLM's own ``Scheduler``; while no claim holds blocks, vLLM's
scheduling and allocation are unchanged (the integration traces, and refuses a
request larger than the pool, which vLLM would leave waiting forever). Once one
does, every waiting request is decided by the contract's
feasibility predicate before vLLM allocates: a claim-blocked or too-large
request is finished at once (``finish_reason="abort"``, ``stop_reason``
``kvclaims:<outcome>:<claims>`` and the attribution under
``kv_transfer_params["kvclaims"]``, which reach offline outputs and HTTP
responses alike), never left waiting; one that fits only in yielding blocks
gets the yielding claims' ``demote`` events first. vLLM's ``FINISHED_ERROR``
is not used because the OpenAI server turns it into a bare HTTP 500 that
cannot name the blocking claims.

A request whose claim operations are invalid, name a claim another tenant owns,
or cannot apply to the book as it stands is rejected the same way
(``kvclaims:rejected:<error type>``, the error under ``kv_transfer_params``)
with nothing applied and nothing traced; the HTTP front end
(`kvclaims.vllm.frontend`) turns that into a 400 or 403.
"""

from __future__ import annotations

from vllm.v1.core.kv_cache_utils import BlockHashWithGroupId
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import Request, RequestStatus
from vllm.version import __version__ as vllm_version

from kvclaims.claimbook import ClaimBook, Quota
from kvclaims.errors import BadArgument, GuardRejected, InvalidInput, KVClaimsError, NoRoom, NotOwner, UnknownId
from kvclaims.model.claim import Claim
from kvclaims.model.feasibility import Decision, decide
from kvclaims.spec import load
from kvclaims.trace import TraceWriter, open_trace_file
from kvclaims.vllm.claims import VllmSide, check_new, submit
from kvclaims.vllm.host import VllmHostSide
from kvclaims.vllm.hosttier import ClaimsConnectorScheduler
from kvclaims.vllm.metrics import ClaimMetrics
from kvclaims.vllm.pool import PoolView, hexid
from kvclaims.vllm.queries import answer
from kvclaims.vllm.wallclock import WallClock
from kvclaims.vllm.xargs import ALL, ANONYMOUS, PREFIX, ClaimOp, RequestOps, parse, rejection, server_key
from kvclaims.model.names import EVENT, POLICY

CONFIG_KEYS = {
    "reserve": int,
    "trace": str,
    "enforce": bool,
    "tenants": bool,
    "tenant_header": str,
    "quota": dict,
    "host_tier": str,
    "fault_injection": bool,
    "refusal_status": int,
    "records": bool,
}
# What vLLM's host tier holds: every computed prompt block (vLLM's own), or only blocks of
# claims that name the host tier, loaded back only for their whole chain (the contract's).
HOST_TIERS = ("all", "claims")
REFUSAL_STATUSES = {200, *range(400, 600)}  # the front end's answer to a refused request (200: vLLM's own)
WAITING = (RequestStatus.WAITING, RequestStatus.PREEMPTED)
STOCK_CACHE_BLOCKS = "_kvclaims_cache_blocks"  # vLLM's own, kept on the coordinator we wrap


def settings(vllm_config) -> dict:
    """``additional_config["kvclaims"]``, validated, for this engine: ``{dp_rank}`` in
    `trace` becomes the engine's data-parallel rank (one file per engine process). It
    reads only the config, so entry points run it before the model loads
    (`VllmEngine`); the scheduler runs it again, for the entry points that cannot."""
    cfg = dict((vllm_config.additional_config or {}).get("kvclaims") or {})
    for key, value in cfg.items():
        if (
            key not in CONFIG_KEYS
            or not isinstance(value, CONFIG_KEYS[key])
            or (CONFIG_KEYS[key] is int and isinstance(value, bool))
        ):
            raise InvalidInput(
                f"additional_config kvclaims.{key}={value!r}: expected one of "
                f"{ {k: t.__name__ for k, t in CONFIG_KEYS.items()} }"
            )
    if cfg.get("host_tier", "all") not in HOST_TIERS:
        raise BadArgument("kvclaims.host_tier", f"must be one of {HOST_TIERS}, got {cfg['host_tier']!r}")
    if cfg.get("refusal_status", 200) not in REFUSAL_STATUSES:
        raise BadArgument(
            "kvclaims.refusal_status", f"an HTTP status for refusals, 200 or 400-599, got {cfg['refusal_status']!r}"
        )
    for key in ("tenant_header", "quota"):
        if key in cfg and not cfg.get("tenants"):
            raise BadArgument(f"kvclaims.{key}", "needs kvclaims.tenants=true (claims that belong to tenants)")
    if not vllm_config.cache_config.enable_prefix_caching:
        raise InvalidInput("kvclaims needs prefix caching (enable_prefix_caching=True)")
    PoolView.check_model(vllm_config)
    if cfg.get("trace"):
        # A dense model's data-parallel engines each run as DP size 1, rank 0; only
        # `data_parallel_index` keeps the engine's own rank.
        pc = vllm_config.parallel_config
        if "{dp_rank}" not in cfg["trace"] and (pc.data_parallel_size > 1 or pc.data_parallel_index > 0):
            raise BadArgument(
                "kvclaims.trace",
                f"{cfg['trace']!r} would be written by every data-parallel "
                "engine: put {dp_rank} in the path (one file per engine)",
            )
        cfg["trace"] = cfg["trace"].replace("{dp_rank}", str(pc.data_parallel_index))
    return cfg


class ClaimsScheduler(Scheduler):
    """vLLM's `Scheduler` with claims; under async scheduling, `AsyncClaimsScheduler` (vLLM
    builds the class it is given, so the choice is made here, from the config)."""

    tick_per_step = True  # TTLs count engine steps (a test harness may drive the clock itself)
    tracks_stored = False  # does it read what `_sync` returns (so the index is logged with the trace off)?
    _loaded: str | None = None  # the request whose blocks loaded from the host vLLM indexes now

    def __new__(cls, vllm_config, *args, **kwargs):
        if vllm_config.scheduler_config.async_scheduling and not issubclass(cls, AsyncScheduler):
            cls = _async_variant(cls)
        return super().__new__(cls)

    def __init__(self, vllm_config, *args, **kwargs) -> None:
        cfg = settings(vllm_config)
        super().__init__(vllm_config, *args, **kwargs)
        self.hash_algo = vllm_config.cache_config.prefix_caching_hash_algo
        self.vocab = vllm_config.model_config.get_vocab_size()
        self.tenant_key = server_key(cfg.get("tenants", False))
        self.quota = Quota.parse(cfg["quota"]) if "quota" in cfg else Quota()
        PoolView.check_groups(self.kv_cache_manager)  # before a trace file exists: a refusal leaves none
        sink = open_trace_file(cfg["trace"], field="kvclaims.trace") if cfg.get("trace") else None
        self.host_tier = cfg.get("host_tier", "all")
        self.fault_injection = cfg.get("fault_injection", False)
        self.dp_rank = vllm_config.parallel_config.data_parallel_index
        trace = TraceWriter(sink, keep=cfg.get("records", False))
        self.start_claims(trace, reserve=cfg.get("reserve", 0), enforce=cfg.get("enforce", True))

    def start_claims(self, trace: TraceWriter, *, reserve: int, enforce: bool, withhold: int = 0) -> None:
        """A fresh claim registry and trace over the pool (less `withhold` blocks), with
        the host tier when the engine runs it."""
        self.pool = PoolView(
            self.kv_cache_manager, self.block_size, self.hash_algo, log=trace.recording or self.tracks_stored
        )
        self.pool.withhold(withhold)
        self.trace = trace
        tier = self.host_connector()
        self.trace.emit(
            "runtime",
            runtime="vllm",
            version=vllm_version,
            model=self.vllm_config.model_config.model,
            hash=self.hash_algo,
            namespace="cache_salt",  # vLLM hashes a request's cache_salt into its first block
            U=self.pool.U,
            B=self.block_size,
            R=reserve,
            host_blocks=tier.host._num_chunks if tier else 0,
            enforce=enforce,
        )
        if not 0 <= reserve < self.pool.U:
            raise InvalidInput(f"kvclaims reserve must satisfy 0 <= R < U={self.pool.U}, got {reserve}")
        spec = load()
        self.metrics = ClaimMetrics(spec, getattr(self, "dp_rank", 0))
        self.book = ClaimBook(
            spec,
            self.trace,
            VllmSide(self.pool),
            U=self.pool.U,
            R=reserve,
            enforce=enforce,
            quota=self.quota,
            observer=self.metrics,
        )
        self.host: VllmHostSide | None = VllmHostSide(self, tier) if tier else None
        self.book.host = self.host
        if self.host:
            self.host.manager.stores_from = self._stores
            if self.host_tier == "claims":
                self.host.connector.load_limit = self.host.claims_only
                self.host.manager.store_only = self.host.claimed_keys
        self.wall = WallClock()
        self.ops: dict[str, RequestOps] = {}
        self.notes: dict[str, dict] = {}  # request -> what its final output reports
        self.hit_blocks: dict[str, int] = {}
        self._admitting: set[str] = set()  # admitted by the step being scheduled
        self.reusing: set[int] = set()  # while room is made: the deciding request's hits (kept by an offload)
        self.last_cached: dict[str, bool] = {}  # request -> was its whole-block prompt cached when first allocated
        self.local_hits: dict[str, int] = {}  # request that loaded from the host -> its device hits
        self.restoring: dict[str, str] = {}  # an owner's restore request -> the claim it restores
        self.waited: set[str] = set()
        self.closing: dict[str, tuple[Request, str]] = {}  # finished by us: output still due
        # Invalidation epochs (the spec's [invalidation]): a request admitted before the
        # latest one indexes nothing more (RKC-INV-6).
        self.epoch = 0
        self.admitted_epoch: dict[str, int] = {}
        self.stale: set[str] = set()  # admitted before the latest invalidation, until the connector forgets them
        self._guard_caching()

    def host_connector(self) -> ClaimsConnectorScheduler | None:
        """The claims host tier's connector half, when the engine runs it
        (`kvclaims.vllm.hosttier`); None: no host tier, claims stay on the device."""
        half = getattr(self.connector, "connector_scheduler", None)
        return half if isinstance(half, ClaimsConnectorScheduler) else None

    def transfers_pending(self) -> bool:
        """Has the host tier a store or load in flight (it stores a block one engine step
        after computing it)?"""
        tier = self.host_connector()
        return tier is not None and tier.has_pending_push_work()

    def _stores(self, request_id: str) -> bool:
        """May the request's blocks go to the host tier? Not a stale one's (RKC-INV-6), which
        the connector offers until it forgets the request, after vLLM frees it."""
        if self.stale:
            tier = self.host_connector()
            self.stale &= self.requests.keys() | (tier._req_status.keys() if tier else set())
        return request_id not in self.stale

    def _guard_caching(self) -> None:
        """Route vLLM's block caching (`KVCacheCoordinator.cache_blocks`, which both
        `allocate_slots` and the async-load path call) through `_cache_blocks`. Wrapped on
        the instance, as `pool.IndexLog` wraps the prefix index: vLLM offers no hook there,
        and the rule needs the request that computed the blocks."""
        wrapped = vars(self.kv_cache_manager.coordinator)
        if "cache_blocks" not in wrapped:
            wrapped[STOCK_CACHE_BLOCKS] = self.kv_cache_manager.coordinator.cache_blocks
        wrapped["cache_blocks"] = self._cache_blocks
        self._stock_cache_blocks = wrapped[STOCK_CACHE_BLOCKS]

    def _cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Index the request's newly full blocks, unless it is stale: admitted before the
        latest invalidation, its KV may rest on KV declared invalid (RKC-INV-6). What it
        stores is traced under its id, after the evictions that made room for it (one
        drain: `_sync` writes removals before stores)."""
        rid = request.request_id
        if self.admitted_epoch.get(rid, self.epoch) != self.epoch:
            return
        if rid not in self.last_cached:
            self.last_cached[rid] = self._whole_prompt_cached(request)
        self._stock_cache_blocks(request, num_computed_tokens)
        if rid != self._loaded:
            self._sync("lru", request=rid)

    # ------------------------------------------------------------------ requests
    def add_request(self, request: Request) -> None:
        rid = request.request_id
        if rid in self.requests:  # a streaming session's next chunk
            return super().add_request(request)
        super().add_request(request)
        try:
            ops = self._vet(request)
            if ops.inject_host_fault is not None:
                return self._operator_fault(request, ops.inject_host_fault)
            if ops.query is not None:
                return self._control(request, ops)
        except KVClaimsError as exc:  # rejected: nothing applied, nothing traced (RKC-RT-4)
            self.notes[rid] = rejection(exc)
            return self._close(request, f"kvclaims:rejected:{type(exc).__name__}")
        if self.trace.recording:
            self.trace.emit(
                "request_submit",
                request=rid,
                tokens=request.num_prompt_tokens,
                blocks=self.pool.hex.hashes(request.block_hashes),
                **({"client": ops.client} if ops.client else {}),
            )
        self.ops[rid] = ops

    def _control(self, request: Request, ops: RequestOps) -> None:
        """A control request (``kvclaims_query``, as the HTTP front end's claim endpoints send):
        claims past their wall-clock deadline expire, its releases (checked with the request)
        apply at once, unless the claim has just expired, and it ends unrun (``stop_reason``
        ``kvclaims:query``) with the answer. Nothing of the request itself is traced, and the
        logical clock does not move. Raises UnknownId or NotOwner for a claim the tenant
        cannot read, nothing changed."""
        query = ops.query or ALL
        if query != ALL and self.book.entries[self.book.get(query).id].tenant != ops.tenant:
            raise NotOwner(f"claim {ops.query!r} belongs to another tenant; only its owner may read it")
        self.expire_wall()
        for cid in ops.release:
            if EVENT.release in self.book.claims[cid].fsm.allowed():
                self.book.end(self.book.claims[cid], EVENT.release, reason="owner")
        note = answer(self.book, self.wall, query, ops.tenant, self.dp_rank)
        self.notes[request.request_id] = {"answer": note}
        self._close(request, "kvclaims:query")

    def _operator_fault(self, request: Request, h: str) -> None:
        """A request carrying an operator's host fault (testing, with
        ``kvclaims.fault_injection``): the fault is injected and the request ends unrun
        (``stop_reason`` ``kvclaims:fault_injected``). Raises BadArgument when fault
        injection is off, UnknownId when no offloaded claim pins a copy of block `h`."""
        if not self.fault_injection:
            raise BadArgument(
                PREFIX + "inject_host_fault",
                "fault injection is off: it is for tests (start with additional_config kvclaims.fault_injection=true)",
            )
        self.inject_host_fault(h)
        self.notes[request.request_id] = {"fault_injected": h}
        self._close(request, "kvclaims:fault_injected")

    def _vet(self, request: Request) -> RequestOps:
        """The request's claim operations, checked against the book as it stands: all of
        them could apply, or an error names the first that cannot (and nothing changes)."""
        params = request.sampling_params
        ops = parse(params.extra_args if params is not None else None, tenant_key=self.tenant_key)
        self._check_ops(ops, request)
        return ops

    def _check_ops(self, ops: RequestOps, request: Request) -> None:
        if ops.claim:
            self.check_tiers(ops.claim)
            _judged(PREFIX + "claim", check_new, self.book, self.block_size, ops.claim, len(request.block_hashes))
        for cid in ops.release:
            _judged(PREFIX + EVENT.release, self.book.check_event, cid, EVENT.release, ops.tenant)

    def _apply_ops(self, request: Request) -> None:
        """RKC-RT-8: a request's claim operations apply together when it is admitted (it
        starts computing its prefix), checked again against the book as it is then; if one
        can no longer apply (another request took the claim id, or released the claim
        meanwhile) none does, and the request runs with its outcome saying so."""
        rid, ops = request.request_id, self.ops.get(request.request_id)
        ids = _claim_ids(ops)
        if ops is None or not ids:
            return
        try:
            self._check_ops(ops, request)
        except KVClaimsError as exc:
            self.notes[rid] = _not_applied(ids, f"{type(exc).__name__}: {exc}")
            return
        for cid in ops.release:
            self.book.end(self.book.claims[cid], EVENT.release, reason="owner", request=rid)
        if ops.claim:
            self._submit(ops.claim, list(request.block_hashes), request=rid, tenant=ops.tenant)
        self.notes[rid] = {"claims": ids}

    def _submit(self, op: ClaimOp, chain: list, *, request: str | None, tenant: str) -> str:
        """Submit `op` on `chain`, with its wall-clock deadline when it has one; its state."""
        deadline = None if op.ttl_s is None else self.wall.now() + op.ttl_s
        state = submit(self.book, op, chain, request=request, tenant=tenant, deadline=deadline)
        if deadline is not None:
            self.wall.add(op.claim_id, deadline)
        return state

    def schedule(self, *args, **kwargs):
        if self.tick_per_step and (self.requests or not self.closing):
            self.tick()  # (a step that only delivers rejections is no tick: they change nothing)
        if self.book.enforce:
            self._arbitrate()
            self._arbitrate_growth()
        held = {r.request_id: self._blocks_of(r) for r in self.running} if self.trace.recording else {}
        self._admitting = set()
        out = super().schedule(*args, **kwargs)
        self._admit_new(out, advanced=True)
        for rid, before in held.items():  # (growth is a trace record only)
            grown = rid in self.requests and self._blocks_of(self.requests[rid]) - before
            if grown > 0:
                self.trace.emit("request_grow", request=rid, tokens=out.num_scheduled_tokens[rid], new_blocks=grown)
        return out

    def _build_kv_connector_meta(self, connector, scheduler_output):
        """The step's admissions apply before the connector plans its stores, so the blocks
        of a claim a request carries are claimed when vLLM offers them to the host tier."""
        self._admit_new(scheduler_output, advanced=False)
        return super()._build_kv_connector_meta(connector, scheduler_output)

    def _admit_new(self, out, *, advanced: bool) -> None:
        """Trace and apply the admissions of the step `out` schedules (once a step), after the
        evictions that made room for them; `advanced`: vLLM has counted their scheduled tokens
        as computed."""
        self._sync("lru")
        for new in out.scheduled_new_reqs:
            if new.req_id not in self._admitting:
                self._admitting.add(new.req_id)
                scheduled = out.num_scheduled_tokens[new.req_id]
                self._admitted(self.requests[new.req_id], scheduled if advanced else 0)

    def _blocks_of(self, request: Request) -> int:
        """How many blocks `request` holds (one KV cache group: `PoolView.check_groups`),
        read off the coordinator's own list: it runs for every running request each step."""
        return len(self.kv_cache_manager.coordinator.get_blocks(request.request_id)[0])

    def growth(self, request: Request, tokens: int) -> tuple[int, Decision | None]:
        """The new blocks `request` (running) needs to compute `tokens` more, and the
        contract's decision on them when free and cached blocks alone cannot give them
        (None: they can, or it needs none). Changes nothing."""
        rid, B = request.request_id, self.block_size
        A = -(-(request.num_computed_tokens + tokens) // B) - self._blocks_of(request)
        if A <= 0 or A <= self.pool.evictable():
            return A, None
        own = {b.block_id for b in self.kv_cache_manager.get_blocks(rid).blocks[0]}
        counts, blocking = self.pool.classes(self.book.holders, self.book.blocking_ids(), own)
        return A, decide(A, counts, blocking, self.book.spec)

    def _arbitrate_growth(self) -> None:
        """Running requests about to compute into new blocks, decided by the same predicate
        as admission: yielding claims give way first; a claim-blocked or too-large growth
        ends the request refused, with attribution (never a wait on claims); one that must
        wait is left to vLLM (it preempts, as stock). Free while no claim holds blocks."""
        if not self.book.holding():
            return
        B = self.block_size
        new = [(r, r.num_tokens_with_spec + r.num_output_placeholders - r.num_computed_tokens) for r in self.running]
        # A request holds its computed tokens' blocks, so computing t more takes at most
        # ceil(t / B) new ones: when free and cached blocks cover all of those, every
        # decision below is "they can" (a decoding batch, mostly).
        if sum(-(-t // B) for _, t in new) <= self.pool.evictable():
            return
        for request, tokens in new:
            A, d = self.growth(request, tokens)
            if d is None or d.outcome == "wait":
                continue
            if d.outcome == "admit":
                own = {b.block_id for b in self.kv_cache_manager.get_blocks(request.request_id).blocks[0]}
                counts = self.pool.classes(self.book.holders, self.book.blocking_ids(), own)[0]
                self._make_room(A - counts.free - counts.cached, own)
            else:
                self._refuse(request, d)

    def tick(self) -> None:
        """One step of the logical clock: TTLs run out, in steps and in seconds."""
        self.trace.time += 1
        if self.book.live:  # (with no live claim nothing expires in steps)
            self.book.expire(self.trace.time)
        if self.wall.deadlines:
            self.expire_wall()

    def expire_wall(self) -> None:
        """Claims past their wall-clock deadline expire (`kvclaims.vllm.wallclock`), by id."""
        claims = self.book.claims
        for cid, deadline in self.wall.due(lambda c: EVENT.expire not in claims[c].fsm.allowed()):
            self.book.end(claims[cid], EVENT.expire, reason="ttl", deadline=deadline)

    def _arbitrate(self) -> None:
        """Decide every fresh waiting request with the contract's predicate. With no claim
        holding blocks only a request larger than the pool is decided (refused): stock
        vLLM would leave it waiting forever. A request that fits in free and cached blocks
        alone is admitted with nothing to demote, the predicate's own answer, read off
        vLLM's free queue (`PoolView.evictable`) without classifying the pool; when it fits
        even with no hit it needs no lookup either (each hit lowers its need by one and
        the room by at most one)."""
        B, holding = self.block_size, self.book.holding()
        for request in [r for r in self.waiting if r.status in WAITING and r.num_computed_tokens == 0]:
            blocks = -(-request.num_tokens // B)
            if blocks <= self.pool.evictable() or (not holding and blocks <= self.pool.U):
                continue
            hits = self.kv_cache_manager.get_computed_blocks(request)[0].blocks[0]
            A = blocks - len(hits)
            if A <= self.pool.evictable(hits):
                continue
            own = {b.block_id for b in hits}
            counts, blocking = self.pool.classes(self.book.holders, self.book.blocking_ids(), own)
            d = decide(A, counts, blocking, self.book.spec)
            if d.outcome == "admit":
                self._make_room(A - counts.free - counts.cached, own)
            elif d.outcome == "wait":
                if request.request_id not in self.waited:
                    self.waited.add(request.request_id)
                    self.trace.emit("request_wait", request=request.request_id, new_blocks=A)
            else:
                self._refuse(request, d)

    def _make_room(self, need: int, own: set[int]) -> None:
        """Yielding claims give way, in the book's order, until their blocks give `need`
        more evictable blocks. A claim's block is freed by its demotion only if nothing
        else references it and the deciding request (`own`: its prefix hits, which it is
        about to hold) does not hit it."""
        holders, blocking = self.book.holders, self.book.blocking_ids()

        def frees(c: Claim, blocks) -> bool:
            return any(
                b.block_id not in own and b.ref_cnt == len(holders[b.block_id]) and not holders[b.block_id] & blocking
                for b in blocks
            )

        self.reusing = own
        try:
            for c in self.book.yielding(frees):
                if need <= 0:
                    return
                need -= sum(b.ref_cnt == 1 and b.block_id not in own for b in self.book.entries[c.id].blocks)
                self.book.give_way(c)
        finally:
            self.reusing = set()

    def _refuse(self, request: Request, d: Decision) -> None:
        rid = request.request_id
        self.trace.emit("request_refuse", request=rid, reason=d.outcome, blocking_claims=list(d.blocking_claims))
        self.metrics.refusal(d.outcome)
        self.notes[rid] = {
            **self.notes.get(rid, {}),
            "refused": d.outcome,
            "blocking_claims": list(d.blocking_claims),
            **_not_applied(_claim_ids(self.ops.get(rid)), "the request was refused"),
        }
        self._close(
            request, ":".join(["kvclaims", d.outcome, *([",".join(d.blocking_claims)] if d.blocking_claims else [])])
        )

    def _close(self, request: Request, stop_reason: str) -> None:
        """Finish a request ourselves; its final output goes out with the next step's."""
        self.closing[request.request_id] = (request, stop_reason)
        self.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)

    def _admitted(self, request: Request, counted: int) -> None:
        """`request` is admitted; of its computed tokens, `counted` are scheduled this step
        (not hits)."""
        rid, B = request.request_id, self.block_size
        hits = (request.num_computed_tokens - counted) // B
        hits = min(hits, self.local_hits.pop(rid, hits))
        self.hit_blocks[rid] = hits
        self.admitted_epoch[rid] = self.epoch
        hit_hashes = self.pool.hex.hashes(request.block_hashes[:hits]) if self.trace.recording or self.book.live else []
        self.trace.emit("request_admit", request=rid, hit_blocks=hit_hashes, new_blocks=self._blocks_of(request) - hits)
        if self.host and self.host_tier == "claims" and rid not in self.restoring:
            self.host.restore_resident(request, hits)
        if self.book.live and rid not in self.restoring:  # (an owner's restore reuses nothing for itself)
            self.book.hits(hit_hashes + self._recomputed_last(request, hits), rid)
        if rid in self.ops:
            self._apply_ops(request)

    def _whole_prompt_cached(self, request: Request) -> bool:
        """Was every block of a whole-block prompt cached when it was first allocated for?"""
        hashes = request.block_hashes
        return (
            bool(hashes)
            and request.num_prompt_tokens == len(hashes) * self.block_size
            and self.pool.resident(hashes) is not None
        )

    def _recomputed_last(self, request: Request, hits: int) -> list[str]:
        """vLLM computes a whole-block prompt's last block again for its last token's logits
        (a hit is capped at ``num_tokens - 1`` tokens): when that block was cached, a claim
        on exactly the prompt is still reused (`RuntimeProfile.recomputes_last_block`)."""
        hashes = request.block_hashes
        if hits and hits == len(hashes) - 1 and self.last_cached.get(request.request_id):
            return [hexid(hashes[-1])]
        return []

    def _free_request(self, request: Request, delay_free_blocks: bool = False):
        rid = request.request_id
        if rid not in self.closing:
            if request.status in (
                RequestStatus.FINISHED_ABORTED,
                RequestStatus.FINISHED_ERROR,
                RequestStatus.FINISHED_IGNORED,
            ):
                self.trace.emit("request_abort", request=rid, status=request.status.name)
                if rid not in self.hit_blocks and _claim_ids(self.ops.get(rid)):
                    self.notes[rid] = _not_applied(
                        _claim_ids(self.ops[rid]), "the request ended before it was admitted"
                    )
            else:
                no_admit = self.ops.get(rid, RequestOps()).no_admit
                self.trace.emit("request_finish", request=rid, admit=not no_admit)
                if no_admit:
                    self._drop_computed(request)
        for table in (
            self.ops,
            self.hit_blocks,
            self.admitted_epoch,
            self.local_hits,
            self.restoring,
            self.last_cached,
        ):
            table.pop(rid, None)
        self.waited.discard(rid)
        return super()._free_request(request, delay_free_blocks)

    def _drop_computed(self, request: Request) -> None:
        """Write no-admit: the blocks this request computed leave the prefix cache,
        unless a claim or another request also holds them."""
        blocks = self.kv_cache_manager.get_blocks(request.request_id).blocks[0]
        ids = {
            b.block_id
            for b in blocks[self.hit_blocks.get(request.request_id, 0) :]
            if b.ref_cnt == 1 and b.block_hash is not None and not b.is_null
        }
        if ids:
            self.kv_cache_manager.evict_blocks(ids)
            self._sync("no_admit")

    def update_from_output(self, scheduler_output, model_runner_output):
        self._sync("lru")  # before vLLM hands the pool's KV events to its publisher
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self.book.materialize_ready()
        for request, stop_reason in self.closing.values():
            eco = outputs.setdefault(request.client_index, EngineCoreOutputs(outputs=[]))
            eco.outputs.append(
                EngineCoreOutput(
                    request_id=request.request_id,
                    new_token_ids=[],
                    finish_reason=FinishReason.ABORT,
                    stop_reason=stop_reason,
                )
            )
        self.closing.clear()
        for eco in outputs.values():
            for out in eco.outputs:
                if out.finish_reason is not None and out.request_id in self.notes:
                    out.kv_transfer_params = {**(out.kv_transfer_params or {}), "kvclaims": self._note(out.request_id)}
        return outputs

    def _note(self, rid: str) -> dict:
        note = self.notes.pop(rid)
        if "claims" in note:
            ids = note["claims"]
            note["claims"] = {cid: self.book.claims[cid].state for cid in ids}
            entries = self.book.entries
            refused = {cid: entries[cid].refusal for cid in ids if entries[cid].refusal}
            if refused:
                note["claim_refusals"] = refused
        return note

    def _sync(self, reason: str, skip: set[str] = frozenset(), **store_fields) -> list[BlockHashWithGroupId]:  # type: ignore[assignment]
        """Write vLLM's own KV events since the last call into the trace (stores but `skip`,
        hashes traced already as restored); returns the index keys stored."""
        stored, removed = self.pool.drain_events()
        if self.trace.recording:
            if removed:
                self.trace.emit("block_evict", blocks=self.pool.hex.keys(removed), tier="device", reason=reason)
            computed = [h for h in self.pool.hex.keys(stored) if h not in skip]
            if computed:
                self.trace.emit("block_store", blocks=computed, tier="device", **store_fields)
        return stored

    # ------------------------------------------------------------------ claims, in process
    def check_tiers(self, op: ClaimOp) -> None:
        """A claim may name the host tier only when the engine runs the claims host tier."""
        if "host" in op.tiers and self.host is None:
            field = "policy" if op.policy == POLICY.offload else "tiers"
            raise BadArgument(
                PREFIX + field,
                f"claim {op.claim_id!r}: {field} {op.policy if field == 'policy' else list(op.tiers)!r} needs "
                "the claims host tier: start vLLM with the kv_transfer_config of kvclaims.vllm.hosttier "
                "(integrations/vllm/README.md)",
            )

    def submit_claim(self, op: ClaimOp, tokens: list[int], tenant: str = ANONYMOUS) -> str:
        """Claim `tokens`, a whole-block prefix, directly (no request); returns the claim's state."""
        bad = [i for i, t in enumerate(tokens) if type(t) is not int or not 0 <= t < self.vocab]
        if bad:
            raise BadArgument(
                "tokens", f"tokens[{bad[0]}] is {tokens[bad[0]]!r}; expected a token id in [0, {self.vocab})"
            )
        chain = self.pool.chain(tokens)
        self.check_tiers(op)
        check_new(self.book, self.block_size, op, len(chain), prefix=len(tokens))
        return self._submit(op, chain, request=None, tenant=tenant)

    def release_claim(self, claim_id: str, tenant: str = ANONYMOUS) -> None:
        self.book.end(self.book.check_event(claim_id, EVENT.release, tenant), EVENT.release, reason="owner")

    def demote_claim(self, claim_id: str, tenant: str = ANONYMOUS) -> None:
        self.book.demote(self.book.check_event(claim_id, EVENT.demote, tenant), reason="owner")

    def offload_claim(self, claim_id: str, tenant: str = ANONYMOUS) -> None:
        """The owner offloads its claim: its blocks' verified host copies are pinned and
        its device blocks go. Raises GuardRejected (the claim names no host tier) or NoRoom
        (a block has no verified host copy yet: vLLM stores a prompt's blocks one engine
        step after computing them), nothing changed."""
        c = self.book.check_event(claim_id, EVENT.offload, tenant)
        if not c.host_allowed:
            raise GuardRejected(claim_id, c.state, EVENT.offload, "host_allowed")
        if self.host is None or not self.host.room(c):
            raise NoRoom(f"claim {claim_id!r}: not every block of its chain has a verified host copy yet")
        self.book.offload(c, reason="owner")

    def inject_host_fault(self, h: str) -> None:
        """Corrupt the host copy of block `h` (hex, as traced) that an offloaded claim pins;
        detected when a load checks it. Raises UnknownId when no claim pins such a copy."""
        key = self.host.pinned_key(h) if self.host else None
        if self.host is None or key is None:
            raise UnknownId(f"block {h!r} is not in the host tier")
        self.trace.emit("operator", action="inject_host_fault", blocks=[h])
        self.host.connector.corrupt(key)

    # ------------------------------------------------------------------ operator actions
    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        """Claims with resident state (device or host) are harmed first, and only when the
        reset will happen."""
        if reset_running_requests or not self._requests_hold_blocks():
            self._invalidate("reset_prefix_cache")
            self._harm_offloaded("reset_prefix_cache")
            self.book.end_holders(set(self.book.holders), EVENT.harm, "reset_prefix_cache")
        cached = self.pool.cached_hashes()
        ok = super().reset_prefix_cache(reset_running_requests, reset_connector)
        if ok and cached:
            self.trace.emit("block_evict", blocks=cached, tier="device", reason="reset_prefix_cache")
        return ok

    def _requests_hold_blocks(self) -> bool:
        return any(b.ref_cnt > len(self.book.holders.get(b.block_id, ())) for b in self.pool.bp.blocks if not b.is_null)

    def evict_blocks(self, block_ids: set[int]) -> None:
        """Invalid KV (a connector's failed load): claims holding a block are harmed, then
        the blocks leave the prefix cache, so stale KV is never served."""
        self._invalidate("evict_blocks", blocks=self.pool.cached_hashes(block_ids))
        self._drop(block_ids, "invalid_load")

    def fail_blocks(self, block_ids: set[int], reason: str = "device_fault") -> None:
        """Device blocks whose KV is known corrupt (an injected or detected device fault):
        claims holding one fail closed (`fail`, the contract's answer to a device fault),
        then the blocks leave the prefix cache; a request still holding one keeps it,
        unindexed, and indexes nothing more (a new epoch)."""
        self._invalidate("inject_device_fault", blocks=self.pool.cached_hashes(block_ids))
        self.book.end_holders(block_ids, EVENT.fail, reason)
        self.kv_cache_manager.evict_blocks(block_ids)
        self._sync(reason)

    def drop_prefix_cache(self) -> None:
        """The contract's prefix-cache reset (weights changed): every claim holding blocks is
        harmed, then every indexed block leaves the prefix cache, through the same eviction
        as invalid KV; a running request keeps its blocks, unindexed. (vLLM's own
        `reset_prefix_cache` instead refuses while requests hold blocks, or preempts them.)"""
        self._invalidate("reset_prefix_cache")
        self._harm_offloaded("reset_prefix_cache")
        self._drop({b.block_id for b in self.pool.bp.blocks if b.block_hash is not None}, "reset_prefix_cache")
        if self.host:  # the host copies hold KV of the old weights too
            self.host.connector.reset_cache()

    def _harm_offloaded(self, reason: str) -> None:
        if self.host:
            self.book.end_all([c.id for c in self.host.offloaded_claims()], EVENT.harm, reason)

    def _invalidate(self, action: str, **fields) -> None:
        """Announce an operator action of the spec's [invalidation]: a new epoch begins, and
        the requests running now index nothing more (`_cache_blocks`)."""
        assert action in self.book.spec.invalidations, action
        self.trace.emit("operator", action=action, **fields)
        self.epoch += 1
        self.stale |= self.admitted_epoch.keys()
        tier = self.host_connector()
        if tier is not None:  # and none of them, nor a store in flight, puts KV on the host
            tier.poison_stores()

    def _drop(self, block_ids: set[int], reason: str) -> None:
        self.book.end_holders(block_ids, EVENT.harm, reason)
        self.kv_cache_manager.evict_blocks(block_ids)
        self._sync(reason)

    def _update_waiting_for_remote_kv(self, request: Request) -> None:
        """A load from the host tier completed: offloaded claims it brought back are
        restored before the request is admitted (their `restore` precedes its `hit`)."""
        rid = request.request_id
        failed = rid in self.failed_recving_kv_req_ids
        if self.host:  # loaded blocks (even those a failed load kept) are restored, not hits
            self.local_hits[rid] = self.host.connector.local.pop(rid, 0) // self.block_size
        self._loaded = rid  # what vLLM indexes now it loaded: traced as restored, not as computed
        try:
            super()._update_waiting_for_remote_kv(request)
        finally:
            self._loaded = None
        restored = self.host.restore_for(request) if self.host and not failed else set()
        self._sync("lru", skip=restored, request=rid)

    def _handle_invalid_blocks(self, invalid_block_ids: set[int], num_scheduled_tokens):
        if self.host:  # a failed restore: the claims owning the chain fail first
            for request in self.kv_holding_waiting:
                if request.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                    self.host.load_failed(request, invalid_block_ids)
        claimed = invalid_block_ids & set(self.book.holders)
        if claimed:  # fail closed even under the recompute policy
            self.evict_blocks(claimed)
        affected = super()._handle_invalid_blocks(invalid_block_ids, num_scheduled_tokens)
        self._sync("invalid_load")
        return affected


def _claim_ids(ops: RequestOps | None) -> list[str]:
    """The claims a request's operations name: those it releases, then the one it makes."""
    return [] if ops is None else [*ops.release, *([ops.claim.claim_id] if ops.claim else [])]


def _not_applied(ids: list[str], why: str) -> dict:
    """What the client is told of claim operations that did not apply (RKC-RT-8)."""
    return {"claims_not_applied": ids, "claims_not_applied_reason": why} if ids else {}


def _judged(field: str, check, *args) -> None:
    """Run a book check; an error it raises names the request field it judged."""
    try:
        check(*args)
    except KVClaimsError as exc:
        exc.field = field
        raise


class AsyncClaimsScheduler(ClaimsScheduler, AsyncScheduler):
    """Claims under vLLM's async scheduling, where step N+1 is scheduled before step N's
    output arrives. vLLM indexes a prefill's blocks when it schedules them
    (`KVCacheManager.allocate_slots`), so until that step's output is processed their KV is
    still being computed: the blocks a step indexed stay `unready` to the claim book (no
    claim materializes over them) until `update_from_output` for that step."""

    tracks_stored = True  # what a step indexes is unready until its output comes back

    def __init__(self, *args, **kwargs) -> None:
        self._scheduling: list[BlockHashWithGroupId] | None = None  # index keys the step being scheduled stored
        self._in_flight: dict[int, list[BlockHashWithGroupId]] = {}  # id(scheduler output) -> index keys it stored
        super().__init__(*args, **kwargs)

    def _sync(self, reason: str, skip: set[str] = frozenset(), **store_fields) -> list[BlockHashWithGroupId]:  # type: ignore[assignment]
        stored = super()._sync(reason, skip, **store_fields)
        if self._scheduling is not None:
            self._scheduling += stored
        return stored

    def schedule(self, *args, **kwargs):
        self._scheduling = []
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            batch, self._scheduling = self._scheduling, None
        if batch:  # a step that indexed something computes it: its output will come back
            self._in_flight[id(out)] = batch
            self.pool.unready.update(batch)
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        self._in_flight.pop(id(scheduler_output), None)
        self.pool.unready = {h for batch in self._in_flight.values() for h in batch}
        return super().update_from_output(scheduler_output, model_runner_output)


def _async_variant(cls: type[ClaimsScheduler]) -> type:
    """`cls` (ClaimsScheduler or a subclass) over vLLM's AsyncScheduler."""
    if cls is ClaimsScheduler:
        return AsyncClaimsScheduler
    return type(f"Async{cls.__name__}", (cls, AsyncClaimsScheduler), {})
