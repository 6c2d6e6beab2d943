"""Per-request claim operations as users send them (`extra_args` / `vllm_xargs`). No engine needed."""

from __future__ import annotations

import pytest

from kvclaims.errors import BadArgument, DuplicateId, InvalidInput, NotOwner
from kvclaims.vllm.xargs import ANONYMOUS, ClaimOp, RequestOps, parse, rejection, seal, to_xargs

KEY = b"a-secret-for-these-tests"


def test_defaults_and_other_keys_left_alone():
    assert parse(None) == RequestOps()
    assert parse({"kv_transfer_params": {"x": 1}}) == RequestOps()
    assert parse({"kvclaims_claim": "c"}) == RequestOps(ClaimOp("c"))
    assert parse({"kvclaims_claim": "s", "kvclaims_strength": "soft"}).claim.policy == "demote"


def test_http_style_values():
    ops = parse(
        {
            "kvclaims_claim": "c",
            "kvclaims_blocks": "60",
            "kvclaims_ttl": 5.0,
            "kvclaims_priority": "-2",
            "kvclaims_release": ["a", "b"],
        }
    )
    assert ops == RequestOps(ClaimOp("c", blocks=60, ttl=5, priority=-2), ("a", "b"))
    assert parse({"kvclaims_no_admit": "true"}).no_admit
    assert parse({"kvclaims_release": "a"}).release == ("a",)


@pytest.mark.parametrize(
    "xargs, field",
    [
        ({"kvclaims_clam": "c"}, "kvclaims_clam"),
        ({"kvclaims_claim": ""}, "kvclaims_claim"),
        ({"kvclaims_claim": "c", "kvclaims_strength": "firm"}, "kvclaims_strength"),
        ({"kvclaims_claim": "c", "kvclaims_policy": "offload", "kvclaims_tiers": ["device"]}, "kvclaims_policy"),
        ({"kvclaims_claim": "c", "kvclaims_tiers": ["host"]}, "kvclaims_tiers"),
        ({"kvclaims_inject_host_fault": 5}, "kvclaims_inject_host_fault"),
        ({"kvclaims_claim": "c", "kvclaims_inject_host_fault": "ab"}, "kvclaims_inject_host_fault"),
        ({"kvclaims_claim": "c", "kvclaims_tiers": "device"}, "kvclaims_tiers"),
        ({"kvclaims_claim": "c", "kvclaims_strength": "soft", "kvclaims_policy": "refuse"}, "kvclaims_policy"),
        ({"kvclaims_claim": "c", "kvclaims_blocks": 0}, "kvclaims_blocks"),
        ({"kvclaims_claim": "c", "kvclaims_ttl": True}, "kvclaims_ttl"),
        ({"kvclaims_ttl": 3}, "kvclaims_ttl"),  # given without a claim
        ({"kvclaims_claim": "c", "kvclaims_no_admit": 1}, "kvclaims_no_admit"),
        ({"kvclaims_claim": "c", "kvclaims_release": "c"}, "kvclaims_release"),
        ({"kvclaims_no_admit": "maybe"}, "kvclaims_no_admit"),
        ({"kvclaims_claim": "a,b"}, "kvclaims_claim"),
        ({"kvclaims_claim": "x" * 257}, "kvclaims_claim"),
        ({"kvclaims_claim": "c", "kvclaims_ttl": "²"}, "kvclaims_ttl"),  # a digit int() rejects
        ({"kvclaims_claim": "c", "kvclaims_ttl": "--5"}, "kvclaims_ttl"),
        ({"kvclaims_claim": "c", "kvclaims_ttl": 2**31}, "kvclaims_ttl"),
        ({"kvclaims_claim": "c", "kvclaims_priority": -(2**31) - 1}, "kvclaims_priority"),
        ({"kvclaims_claim": "c", "kvclaims_strength": ["hard"]}, "kvclaims_strength"),
        ({"kvclaims_release": []}, "kvclaims_release"),
        ({"kvclaims_release": ["a", "b", "a"]}, "kvclaims_release"),
        ({"kvclaims_release": "a", "kvclaims_tenant": "t"}, "kvclaims_tenant"),  # no tenants here
        ({"kvclaims_release": "a", "kvclaims_seal": "s"}, "kvclaims_seal"),
    ],
)
def test_typed_errors_name_the_argument(xargs, field):
    with pytest.raises(BadArgument, match=f"^{field}: ") as err:
        parse(xargs)
    assert err.value.field == field


def test_tenants_are_sealed():
    """With tenants, claim operations need their tenant, sealed under the server's key: a
    client cannot name another tenant."""
    sealed = {"kvclaims_release": "a", "kvclaims_tenant": "t1", "kvclaims_seal": seal(KEY, "t1")}
    assert parse(sealed, tenant_key=KEY).tenant == "t1"
    assert parse({"kvclaims_no_admit": True}, tenant_key=KEY).tenant == ANONYMOUS
    for xargs, field in (
        ({"kvclaims_release": "a"}, "kvclaims_tenant"),
        ({**sealed, "kvclaims_tenant": "t2"}, "kvclaims_seal"),
        ({**sealed, "kvclaims_seal": seal(b"another-key-entirely", "t1")}, "kvclaims_seal"),
        ({**sealed, "kvclaims_seal": "é"}, "kvclaims_seal"),
    ):
        with pytest.raises(BadArgument) as err:
            parse(xargs, tenant_key=KEY)
        assert err.value.field == field
    assert to_xargs("c", tenant="t1", tenant_key=KEY)["kvclaims_seal"] == seal(KEY, "t1")


def test_rejection_is_what_the_client_is_told():
    assert rejection(BadArgument("kvclaims_ttl", "bad")) == {
        "error": "kvclaims_ttl: bad",
        "type": "BadArgument",
        "field": "kvclaims_ttl",
        "status": 400,
    }
    assert rejection(DuplicateId("claim 'c' already exists"))["field"] is None
    assert rejection(NotOwner("not yours"))["status"] == 403


def test_to_xargs_round_trips_and_validates():
    x = to_xargs("c", blocks=4, strength="soft", release="old")
    assert x == {"kvclaims_claim": "c", "kvclaims_blocks": 4, "kvclaims_strength": "soft", "kvclaims_release": ["old"]}
    assert parse(x).claim == ClaimOp("c", blocks=4, strength="soft", policy="demote")
    assert to_xargs() == {}
    assert parse(to_xargs("c", policy="offload")).claim.tiers == ("device", "host")
    with pytest.raises(InvalidInput):
        to_xargs("c", policy="offload", tiers=["device"])
