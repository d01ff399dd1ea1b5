from fabric.metering.tenants import from_spec, key_hash

TENANTS = [{"name": "demo", "api_key_sha256": key_hash("k1")},
           {"name": "trial", "api_key_sha256": key_hash("k2"), "requests_per_min": 4,
            "tokens_per_min": 100, "allowed_privacy": ["none"]},
           {"name": "prepaid", "api_key_sha256": key_hash("k3"), "daily_budget_usd": 0.01}]


def gate(share=1.0, now=None):
    g = from_spec(TENANTS, key_hash("internal"), share)
    if now is not None:
        g.clock = lambda: now[0]
    return g


def test_no_tenants_means_open():
    g = from_spec([], None, 1.0)
    assert g.open and g.authenticate("").name == "default"


def test_authentication():
    g = gate()
    assert g.authenticate("").status == 401 and "missing" in g.authenticate("").message
    assert g.authenticate("Bearer nope").status == 401
    assert g.authenticate("Basic k1").status == 401
    assert g.authenticate("Bearer k1").name == "demo"
    assert g.authenticate("bearer  k2 ").name == "trial"
    assert g.authenticate("Bearer internal").name == "fabric-internal"
    assert "k1" not in repr(g.tenants)  # keys are held as hashes only


def test_identity_on_behalf_of_a_tenant_is_the_fabrics_key_alone():
    g = gate()
    assert g.identify("Bearer k1").name == "demo"
    assert g.identify("Bearer internal", "trial").name == "trial"
    refused = g.identify("Bearer k1", "trial")
    assert refused.status == 403 and "reserved" in refused.message
    assert g.identify("Bearer internal", "nobody").status == 403
    assert g.identify("Bearer nope", "trial").status == 401  # the key is checked first
    assert from_spec([], None, 1.0).identify("", "trial").name == "default"


def test_requests_per_minute_with_retry_after():
    now = [1000.0]
    g = gate(now=now)
    trial = g.authenticate("Bearer k2")
    assert [g.admit(trial) for _ in range(4)] == [None] * 4
    over = g.admit(trial)
    assert over.status == 429 and over.code == "rate_limit_exceeded" and 0 < over.retry_after_s <= 60
    assert over.retry_after_s == 60  # the first request leaves the window in 60 s
    now[0] = 1030.0
    assert g.admit(trial).retry_after_s == 30
    now[0] = 1060.0  # a sliding window: the first four are a minute old
    assert g.admit(trial) is None


def test_no_double_burst_across_a_minute_boundary():
    now = [1019.0]   # one second before a wall-clock minute ends
    g = gate(now=now)
    trial = g.authenticate("Bearer k2")
    assert [g.admit(trial) for _ in range(4)] == [None] * 4
    now[0] = 1021.0  # the next wall-clock minute: still the same 60 s window
    assert g.admit(trial).status == 429


def test_replica_share_of_limits():
    now = [0.0]
    g = gate(share=0.5, now=now)
    trial = g.authenticate("Bearer k2")
    assert [g.admit(trial) is None for _ in range(3)] == [True, True, False]


def test_tokens_per_minute_and_privacy():
    g = gate(now=[0.0])
    trial = g.authenticate("Bearer k2")
    assert g.admit(trial, "edge").status == 403
    assert g.admit(trial) is None
    g.charge(trial, 100, 0.0)
    assert g.admit(trial).status == 429 and "tokens/min" in g.admit(trial).message
    g.clock = lambda: 60.0
    assert g.admit(trial) is None  # the tokens left the window


def test_daily_budget_resets_at_midnight_utc():
    now = [86400 * 10 + 100.0]
    g = gate(now=now)
    prepaid = g.authenticate("Bearer k3")
    assert g.admit(prepaid) is None
    g.charge(prepaid, 10, 0.02)
    refused = g.admit(prepaid)
    assert refused.status == 402 and refused.code == "insufficient_quota"
    now[0] = 86400 * 11 + 1
    assert g.admit(prepaid) is None


def test_allowed_regions_must_be_pinned_and_tiers_matched():
    g = from_spec([{"name": "eu", "api_key_sha256": key_hash("k4"), "allowed_regions": ["edge"],
                    "allowed_tiers": ["large"]},
                   {"name": "any", "api_key_sha256": key_hash("k5"), "allowed_regions": None}],
                  None, 1.0)
    eu, anyone = g.authenticate("Bearer k4"), g.authenticate("Bearer k5")
    unpinned = g.admit(eu, region=None, tier="large")
    assert unpinned.status == 403 and "fabric_region" in unpinned.message and "edge" in unpinned.message
    assert g.admit(eu, region="cloud", tier="large").status == 403
    assert g.admit(eu, region="edge", tier="large") is None
    small = g.admit(eu, region="edge", tier="small")
    assert small.status == 403 and "small tier" in small.message
    assert g.admit(anyone, region=None, tier="small") is None
