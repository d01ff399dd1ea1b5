"""cluster.yaml stays a valid Ray cluster-launcher config whose site node types match the spec."""

from pathlib import Path

import yaml

from fabric.spec import LLM_SLOT_RESOURCE, REGION_LABEL, SITE_LABEL, load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_is_valid_for_ray():
    from fabric.internals import validate_cluster_config

    validate_cluster_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))


def test_cluster_yaml_node_types_match_example_global_spec():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    spec = load_spec(ROOT / "deployments" / "example-global.yaml")
    site_types = {t["labels"][SITE_LABEL]: t for t in cfg["available_node_types"].values()
                  if SITE_LABEL in t.get("labels", {})}
    assert set(site_types) == {s.name for _, s in spec.sites}
    for region, site in spec.sites:
        node_type = site_types[site.name]
        assert node_type["labels"][REGION_LABEL] == region
        assert node_type["resources"].get(LLM_SLOT_RESOURCE, 0) >= 1
        assert node_type["max_workers"] == sum(p.nodes for p in site.node_pools)


def test_cluster_nodes_start_with_the_data_path_environment():
    from fabric.cluster import DATA_PATH_ENV

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        for name, value in DATA_PATH_ENV.items():
            if name.startswith("RAY_SERVE"):
                assert f"{name}={value}" in start or f'{name}="{value}"' in start, (key, name)
