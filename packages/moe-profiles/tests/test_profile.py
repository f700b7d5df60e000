import json

import pytest

from moe_profiles import (
    PRESETS,
    Profile,
    ProfileError,
    Trace,
    find_profile,
    load_preset,
    load_preset_requests,
    simulate,
    synthetic_trace,
)


@pytest.fixture(scope="module")
def profile():
    trace = synthetic_trace(4, 32, 4, 300, 1.2, 1, 6)
    return Profile.from_trace(trace, total_slots=56, source={"preset": "synthetic"}, points=6)


def test_profile_round_trips(profile, tmp_path):
    path = profile.save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "moe-profile" and doc["version"] == 1
    assert doc["source"]["preset"] == "synthetic" and doc["source"]["tokens"] == 300
    loaded = Profile.load(path)
    assert loaded == profile
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_budgets_pinning_and_hot(profile):
    caps = profile.capacities(56)
    assert sum(caps) == 56 and all(4 <= c <= 32 for c in caps)
    other = profile.capacities(80)
    assert sum(other) == 80 and all(b >= a for a, b in zip(caps, other, strict=True))
    for layer, ids in profile.pinned.items():
        assert len(ids) <= caps[layer] // 2 and len(ids) <= caps[layer] - 4
    trimmed = profile.pinned_for([6] * 4)
    assert all(len(ids) <= 2 for ids in trimmed.values())
    hot = profile.hot(0, 5)
    counts = profile.counts[0]
    assert len(hot) == 5 and counts[hot[0]] == max(counts)
    assert [counts[e] for e in hot] == sorted((counts[e] for e in hot), reverse=True)


def test_wrong_model_is_refused_naming_both(profile):
    profile.check("synthetic")
    with pytest.raises(ProfileError, match=r"synthetic.*0123456789abcdef"):
        profile.check("0123456789abcdef")


def test_bad_files_are_clear(profile, tmp_path):
    doc = profile.to_json()
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**doc, "version": 2}))
    with pytest.raises(ProfileError, match="version 2"):
        Profile.load(path)
    path.write_text(json.dumps(doc)[:-20])
    with pytest.raises(ProfileError, match="corrupt profile"):
        Profile.load(path)
    del doc["counts"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="missing field 'counts'"):
        Profile.load(path)
    doc = profile.to_json()
    doc["counts"][1] = doc["counts"][1][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="counts"):
        Profile.load(path)
    with pytest.raises(ProfileError, match="no such profile"):
        Profile.load(tmp_path / "absent.json")


def test_find_profile_by_fingerprint(profile, tmp_path):
    assert find_profile("ffffffffffffffff") is None
    profile.save(tmp_path / "synthetic.json")
    assert find_profile("synthetic", dirs=[tmp_path]) == profile


def test_presets_are_realistic():
    for name in PRESETS:
        prompts = load_preset(name)
        assert 8 <= len(prompts) <= 20, name
    tools = load_preset_requests("tools")
    assert all(r.tools and r.prompt[-1]["role"] == "user" for r in tools)
    assert all(t["type"] == "function" and t["function"]["name"] for r in tools for t in r.tools)
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("poetry")


def test_warm_start_from_a_profile_saves_misses():
    # Measure the profile on the first prompts, use it on the first steps of a later one.
    trace = synthetic_trace(4, 32, 4, 800, 1.2, 11, 8)
    half = [layer.steps for layer in trace.layers]
    seen = Trace.from_steps([s[:400] for s in half], trace.num_experts, fingerprint="synthetic")
    fresh = Trace.from_steps([s[600:640] for s in half], trace.num_experts)
    profile = Profile.from_trace(seen, total_slots=4 * 10, points=6)
    caps = profile.capacities(4 * 10)
    cold = simulate(fresh, caps, "lfuda")
    warm = simulate(
        fresh, caps, "lfuda", pinned=profile.pinned_for(caps), prefetch=profile.warm(caps)
    )
    assert warm.misses < cold.misses
