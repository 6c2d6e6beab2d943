"""Per-request claim operations as users send them (`extra_args` / `vllm_xargs`). No engine needed."""
from __future__ import annotations

import pytest

from kvclaims.errors import InvalidInput
from kvclaims.vllm.xargs import ClaimOp, RequestOps, parse, to_xargs


def test_defaults_and_other_keys_left_alone():
    assert parse(None) == RequestOps()
    assert parse({"kv_transfer_params": {"x": 1}}) == RequestOps()
    assert parse({"kvclaims_claim": "c"}) == RequestOps(ClaimOp("c"))
    assert parse({"kvclaims_claim": "s", "kvclaims_strength": "soft"}).claim.policy == "demote"


def test_http_style_values():
    ops = parse({"kvclaims_claim": "c", "kvclaims_blocks": "60", "kvclaims_ttl": 5.0,
                 "kvclaims_priority": "-2", "kvclaims_release": ["a", "b"]})
    assert ops == RequestOps(ClaimOp("c", blocks=60, ttl=5, priority=-2), ("a", "b"))
    assert parse({"kvclaims_no_admit": "true"}).no_admit
    assert parse({"kvclaims_release": "a"}).release == ("a",)


@pytest.mark.parametrize("xargs, names", [
    ({"kvclaims_clam": "c"}, "kvclaims_clam"),
    ({"kvclaims_claim": ""}, "kvclaims_claim"),
    ({"kvclaims_claim": "c", "kvclaims_strength": "firm"}, "kvclaims_strength"),
    ({"kvclaims_claim": "c", "kvclaims_policy": "offload"}, "kvclaims_policy"),
    ({"kvclaims_claim": "c", "kvclaims_strength": "soft", "kvclaims_policy": "refuse"}, "soft"),
    ({"kvclaims_claim": "c", "kvclaims_blocks": 0}, "kvclaims_blocks"),
    ({"kvclaims_claim": "c", "kvclaims_ttl": True}, "kvclaims_ttl"),
    ({"kvclaims_ttl": 3}, "without kvclaims_claim"),
    ({"kvclaims_claim": "c", "kvclaims_no_admit": 1}, "kvclaims_no_admit"),
    ({"kvclaims_claim": "c", "kvclaims_release": "c"}, "kvclaims_release"),
    ({"kvclaims_no_admit": "maybe"}, "kvclaims_no_admit"),
])
def test_typed_errors_name_the_argument(xargs, names):
    with pytest.raises(InvalidInput, match=names):
        parse(xargs)


def test_to_xargs_round_trips_and_validates():
    x = to_xargs("c", blocks=4, strength="soft", release="old")
    assert x == {"kvclaims_claim": "c", "kvclaims_blocks": 4, "kvclaims_strength": "soft",
                 "kvclaims_release": ["old"]}
    assert parse(x).claim == ClaimOp("c", blocks=4, strength="soft", policy="demote")
    assert to_xargs() == {}
    with pytest.raises(InvalidInput):
        to_xargs("c", policy="offload")
