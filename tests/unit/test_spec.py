import pytest

from fabric.spec import FabricSpec, SpecError, default_spec_path, load_spec, parse_spec

GOOD = {"regions": [{"name": "edge", "sites": [{"name": "edge-a"}]},
                    {"name": "cloud", "sites": [{"name": "cloud-a", "num_cpus": 2}]}]}


def test_shipped_local_spec_loads():
    spec = load_spec(default_spec_path())
    assert [r.name for r in spec.regions] == ["edge", "cloud"]
    assert [(region, s.name) for region, s in spec.sites] == [("edge", "edge-a"), ("cloud", "cloud-a")]
    assert spec.model.id == "tiny-llama" and spec.model.source is None
    assert spec.scheduler.policy == "round_robin"


def test_defaults_fill_in():
    spec = parse_spec(GOOD)
    assert spec.endpoint.port == 8000 and spec.models[0].tier == "small"
    assert spec.sites[1][1].num_cpus == 2


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("regions"), "regions"),
    (lambda d: d["regions"][0].update(name="Edge West"), "regions[0].name"),
    (lambda d: d["regions"][1]["sites"].append({"name": "edge-a"}), "duplicate site"),
    (lambda d: d["regions"][0]["sites"][0].update(num_cpus=-1), "regions[0].sites[0].num_cpus"),
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


def test_spec_round_trips_as_json():
    spec = parse_spec(GOOD)
    assert FabricSpec.model_validate_json(spec.model_dump_json()) == spec
