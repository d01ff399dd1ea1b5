import re

import pytest

from fabric.spec import FabricSpec, SpecError, default_spec_path, load_spec, parse_spec

GOOD = {"regions": [{"name": "edge", "sites": [{"name": "edge-a"}]},
                    {"name": "cloud", "sites": [{"name": "cloud-a", "local": {"num_cpus": 2}}]}]}


def test_shipped_local_spec_loads():
    spec = load_spec(default_spec_path())
    assert [r.name for r in spec.regions] == ["edge", "cloud"]
    assert [(region, s.name) for region, s in spec.sites] == [
        ("edge", "edge-a"), ("cloud", "cloud-a"), ("cloud", "cloud-b")]
    assert [s.name for _, s in spec.hosting_sites(spec.model)] == ["edge-a", "cloud-a"]
    # series paths are made absolute and exist, so actors on any node can read them
    from pathlib import Path
    ref = spec.regions[0].sites[0].power.carbon_g_per_kwh
    assert Path(ref.file).is_absolute() and Path(ref.file).is_file()
    assert spec.model.id == "tiny-llama" and spec.model.source is None
    assert spec.scheduler.policy == "fabric"
    assert [r.edge for r in spec.regions] == [True, False]


def test_defaults_fill_in():
    spec = parse_spec(GOOD)
    assert spec.endpoint.port == 8000 and spec.models[0].tier == "small"
    assert spec.sites[1][1].num_cpus == 2


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("regions"), "regions"),
    (lambda d: d["regions"][0].update(name="Edge West"), "regions[0].name"),
    (lambda d: d["regions"][1]["sites"].append({"name": "edge-a"}), "duplicate site"),
    (lambda d: d["regions"][0]["sites"][0].update(local={"num_cpus": -1}), "regions[0].sites[0].local.num_cpus"),
    (lambda d: d["regions"][0]["sites"][0].update(pue=0.9), "regions[0].sites[0].pue"),
    (lambda d: d["regions"][0]["sites"][0].update(node_pools=[
        {"gpu_type": "H100", "tdp_w": 700, "idle_w": 800}]), "idle_w (800.0) must be below tdp_w"),
    (lambda d: d["regions"][0]["sites"][0].update(power={"budget_mw": 2, "source_mix": {
        "solar": 0.5, "gas": 0.2}}), "sum to 1"),
    (lambda d: d["regions"][0]["sites"][0].update(power={"budget_mw": 2, "curtailments": [
        {"start_s": 0, "duration_s": 60, "budget_fraction": 1.5}]}),
     "regions[0].sites[0].power.curtailments[0].budget_fraction"),
    (lambda d: d["regions"][0]["sites"][0].update(power={"budget_mw": 0}), "power.budget_mw"),
    (lambda d: d["regions"][0]["sites"][0].update(power={"budget_mw": 1, "carbon_g_per_kwh": -3}),
     "carbon intensity cannot be negative"),
    (lambda d: d.update(models=[{"id": "m", "hosting": ["mars"]}]), "unknown region/site: mars"),
    (lambda d: d.update(scheduler={"policy": "magic"}), "scheduler.policy"),
    (lambda d: d.update(endpoint={"port": 70000}), "endpoint.port"),
    (lambda d: d["regions"][0].update(zone="x"), "regions[0].zone"),
    (lambda d: d.update(regions=[]), "regions"),
])
def test_bad_spec_names_file_and_field(mutate, field):
    import copy
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "deployments/bad.yaml")
    assert "deployments/bad.yaml" in str(err.value)
    assert field in str(err.value)


def test_bad_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="not found"):
        load_spec(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("regions: [\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(scalar)


def test_missing_series_file_names_site_and_file(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("regions:\n  - name: r\n    sites:\n      - name: a\n        power:\n"
                   "          budget_mw: 1\n          carbon_g_per_kwh: {file: nope.csv}\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert "s.yaml" in str(err.value) and "regions[0].sites[0].power" in str(err.value)
    assert "nope.csv" in str(err.value)


def test_example_global_spec_is_realistic():
    spec = load_spec(default_spec_path().parent / "example-global.yaml")
    assert len(spec.sites) >= 4
    assert all(2 <= s.capacity_mw <= 4 for _, s in spec.sites)
    assert {p.gpu_type for _, s in spec.sites for p in s.node_pools} >= {"H100", "H200"}


def test_gpu_models_get_gpu_engines_and_cpu_models_cpu_ones():
    from ray.serve.llm import LLMConfig

    from fabric.layers.llm.server import CPU_ENGINE_ENV, llm_config_fields

    spec = load_spec(default_spec_path().parent / "example-global.yaml")
    gpu = LLMConfig(**llm_config_fields(spec, spec.model, "meta-llama/Llama-3.1-8B-Instruct"))
    assert gpu.accelerator_config.kind == "gpu"
    assert gpu.placement_group_config["bundles"] == [{"GPU": 1, "fabric_llm_slot": 1}]
    assert "enforce_eager" not in gpu.engine_kwargs and gpu.engine_kwargs["max_model_len"] == 8192
    assert not set(CPU_ENGINE_ENV) & set(gpu.runtime_env["env_vars"])
    spec.model.gpus_per_replica = 4  # tensor parallel: four GPUs of one node, the slot once
    tp = llm_config_fields(spec, spec.model, "m")
    assert tp["placement_group_config"] == {"bundles": [{"GPU": 1, "fabric_llm_slot": 1}] + [{"GPU": 1}] * 3,
                                            "strategy": "STRICT_PACK"}
    assert tp["engine_kwargs"]["tensor_parallel_size"] == 4
    assert LLMConfig(**tp).accelerator_config.kind == "gpu"
    local = load_spec(default_spec_path())
    cpu = LLMConfig(**llm_config_fields(local, local.model, "/models/tiny"))
    assert cpu.accelerator_config.kind == "cpu" and cpu.engine_kwargs["enforce_eager"] is True
    assert cpu.placement_group_config["bundles"] == [{"CPU": 1, "fabric_llm_slot": 1}]


def test_spec_round_trips_as_json():
    spec = parse_spec(GOOD)
    assert FabricSpec.model_validate_json(spec.model_dump_json()) == spec


def test_region_names_that_would_shadow_the_api_are_refused():
    from fabric.spec import SpecError, parse_spec

    for name in ("v1", "fabric"):
        with pytest.raises(SpecError, match="reserved"):
            parse_spec({"regions": [{"name": name, "sites": [{"name": "s", "capacity_mw": 1,
                                                               "power": {"budget_mw": 1}}]}]})


def test_several_models_are_checked_at_load():
    from fabric.spec import model_slug

    two = {**GOOD, "models": [{"id": "small", "hosting": ["edge"]},
                              {"id": "Org/Big-7B", "tier": "large", "hosting": ["cloud"]}]}
    spec = parse_spec(two)
    assert [m.id for m in spec.models] == ["small", "Org/Big-7B"] and model_slug("Org/Big-7B") == "org-big-7b"
    for models, needle in (
            ([{"id": "a"}, {"id": "a"}], "duplicate model id(s): a"),
            ([{"id": "auto"}], "model id 'auto' is reserved"),
            ([{"id": "a/b"}, {"id": "a-b"}], "collide in their endpoint paths"),
            ([{"id": "a"}, {"id": "b", "hosting": ["edge-a"]}], "site 'edge-a' has 1 LLM slot(s) but models a, b need 2")):
        with pytest.raises(SpecError, match=re.escape(needle)):
            parse_spec({**GOOD, "models": models})


def test_the_tier_classifier_is_pluggable_and_checked_at_load():
    spec = parse_spec({**GOOD, "scheduler": {"classifier": "fabric.scheduling.classify:RuleClassifier",
                                             "classifier_params": {"threshold": 0.9}}})
    assert spec.scheduler.classifier_params == {"threshold": 0.9}
    for classifier, params, needle in (("nowhere.mod:Thing", {}, "cannot be loaded"),
                                       ("fabric.scheduling.classify:RuleClassifier", {"colour": 1}, "rejected its parameters"),
                                       ("fabric.spec:EndpointSpec", {}, "has no classify(request) method")):
        with pytest.raises(SpecError, match=re.escape(needle)):
            parse_spec({**GOOD, "scheduler": {"classifier": classifier, "classifier_params": params}})
