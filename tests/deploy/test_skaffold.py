"""skaffold.yaml, checked offline.

No skaffold binary and no copy of its JSON schema can be installed here (neither PyPI nor npm
ships them), so this is a structural check: SKAFFOLD_V4BETA13 below transcribes, for the parts
of the configuration this project uses, the property names, types and required fields of the
definitions in skaffold's published schema `docs-v2/content/en/schemas/v4beta13.json`
(SkaffoldConfig, BuildConfig, LocalBuild, TagPolicy, Artifact, CustomArtifact,
CustomDependencies, DeployConfig, LegacyHelmDeploy, HelmRelease, Profile, JSONPatch, Metadata,
Activation). Like the schema, every object rejects unknown properties. Then the profiles' JSON
patches are applied and each result is checked again, and rendered with helm using skaffold's
image variables, so a profile that points at a missing values file or a value the chart does
not have fails here rather than at `skaffold run`.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, ROOT, helm_run

SKAFFOLD = ROOT / "skaffold.yaml"
CONTAINERFILE = ROOT / "containers" / "Containerfile"

# Type names: "str", "bool", "int", "list[str]", "map[str]", "any", "object" (free), or a
# definition name (a nested object), or "list[Def]".
SKAFFOLD_V4BETA13: dict[str, dict[str, Any]] = {
    "SkaffoldConfig": {
        "required": ["apiVersion", "kind"],
        "properties": {
            "apiVersion": "str", "kind": "str", "metadata": "Metadata",
            "requires": "list[object]", "build": "BuildConfig", "test": "list[object]",
            "manifests": "object", "deploy": "DeployConfig", "portForward": "list[object]",
            "resourceSelector": "object", "verify": "list[object]",
            "customActions": "list[object]", "profiles": "list[Profile]",
        },
    },
    "Metadata": {"properties": {"name": "str", "labels": "map[str]",
                                "annotations": "map[str]"}},
    # BuildConfig is anyOf over the build environments; this is its `local` variant.
    "BuildConfig": {"properties": {
        "artifacts": "list[Artifact]", "hooks": "object", "insecureRegistries": "list[str]",
        "tagPolicy": "TagPolicy", "platforms": "list[str]", "local": "LocalBuild"}},
    "LocalBuild": {"properties": {"push": "bool", "tryImportMissing": "bool",
                                  "useDockerCLI": "bool", "useBuildkit": "bool",
                                  "concurrency": "int"}},
    "TagPolicy": {"properties": {"gitCommit": "object", "sha256": "object",
                                 "envTemplate": "object", "dateTime": "object",
                                 "customTemplate": "object", "inputDigest": "object"}},
    # Artifact is anyOf: the common fields plus exactly one builder.
    "Artifact": {
        "required": ["image"],
        "properties": {"image": "str", "context": "str", "sync": "object",
                       "requires": "list[object]", "hooks": "object",
                       "platforms": "list[str]", "runtimeType": "str"},
        "one_of": {"custom": "CustomArtifact", "docker": "object", "bazel": "object",
                   "jib": "object", "kaniko": "object", "buildpacks": "object",
                   "ko": "object"},
    },
    "CustomArtifact": {"properties": {"buildCommand": "str",
                                      "dependencies": "CustomDependencies"}},
    "CustomDependencies": {"properties": {"dockerfile": "object", "command": "str",
                                          "paths": "list[str]", "ignore": "list[str]"}},
    "DeployConfig": {"properties": {
        "docker": "object", "helm": "LegacyHelmDeploy", "kpt": "object", "kubectl": "object",
        "cloudrun": "object", "statusCheck": "bool", "statusCheckDeadlineSeconds": "int",
        "tolerateFailuresUntilDeadline": "bool", "kubeContext": "str", "logs": "object"}},
    "LegacyHelmDeploy": {"properties": {"concurrency": "int", "releases": "list[HelmRelease]",
                                        "flags": "object", "hooks": "object"}},
    "HelmRelease": {
        "required": ["name"],
        "properties": {
            "name": "str", "chartPath": "str", "remoteChart": "str", "valuesFiles": "list[str]",
            "namespace": "str", "version": "str", "setValues": "map[str]",
            "setValueTemplates": "map[str]", "setFiles": "map[str]", "createNamespace": "bool",
            "wait": "bool", "recreatePods": "bool", "skipBuildDependencies": "bool",
            "skipTests": "bool", "useHelmSecrets": "bool", "repo": "str",
            "upgradeOnChange": "bool", "overrides": "object", "packaged": "object",
            "dependsOn": "list[str]"},
    },
    "Profile": {
        "required": ["name"],
        "properties": {
            "name": "str", "activation": "list[Activation]", "requiresAllActivations": "bool",
            "patches": "list[JSONPatch]", "build": "BuildConfig", "test": "list[object]",
            "manifests": "object", "deploy": "DeployConfig", "portForward": "list[object]",
            "resourceSelector": "object", "verify": "list[object]",
            "customActions": "list[object]"},
    },
    "Activation": {"properties": {"env": "str", "kubeContext": "str", "command": "str"}},
    "JSONPatch": {"required": ["path"],
                  "properties": {"op": "str", "path": "str", "from": "str", "value": "any"}},
}
PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}


def check(value: Any, type_name: str, where: str) -> list[str]:
    """Problems of `value` against a type of the transcribed schema."""
    scalar = {"str": str, "bool": bool, "int": int}
    if type_name == "any":
        return []
    if type_name in scalar:
        ok = isinstance(value, scalar[type_name]) and not (
            type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    if type_name == "object":
        return [] if isinstance(value, dict) else [f"{where}: expected an object"]
    if type_name == "map[str]":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return [f"{where}: expected a map of strings"]
        return []
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        inner = type_name[5:-1]
        return [p for i, item in enumerate(value) for p in check(item, inner, f"{where}[{i}]")]
    definition = SKAFFOLD_V4BETA13[type_name]
    if not isinstance(value, dict):
        return [f"{where}: expected {type_name} (an object)"]
    problems = [f"{where}: {type_name} requires {r!r}"
                for r in definition.get("required", []) if r not in value]
    allowed = {**definition["properties"], **definition.get("one_of", {})}
    for key, item in value.items():
        if key not in allowed:
            problems.append(f"{where}: {type_name} has no property {key!r}")
        else:
            problems += check(item, allowed[key], f"{where}.{key}")
    builders = [k for k in definition.get("one_of", {}) if k in value]
    if "one_of" in definition and len(builders) > 1:
        problems.append(f"{where}: more than one builder {builders}")
    return problems


def pointer(doc: Any, path: str) -> tuple[Any, str | int]:
    """Parent container and last key of a JSON pointer (RFC 6901)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    return node, (int(last) if isinstance(node, list) and last != "-" else last)


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    result = copy.deepcopy(config)
    for patch in patches:
        op = patch.get("op", "replace")
        parent, key = pointer(result, patch["path"])
        if op == "replace":
            if isinstance(parent, dict):
                assert key in parent, f"replace {patch['path']}: nothing there"
            parent[key] = copy.deepcopy(patch["value"])
        elif op == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else int(key), patch["value"])
            else:
                parent[key] = copy.deepcopy(patch["value"])
        elif op == "remove":
            del parent[key]
        else:
            raise AssertionError(f"patch op {op} not used by this project")
    return result


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data = yaml.safe_load(SKAFFOLD.read_text())
    assert isinstance(data, dict)
    return data


def _profile_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    configs = {"": config}
    for profile in config.get("profiles", []):
        configs[profile["name"]] = apply_patches(config, profile.get("patches", []))
    return configs


def test_structure_matches_the_v4beta13_schema(config):
    assert check(config, "SkaffoldConfig", "skaffold.yaml") == []
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    assert config["kind"] == "Config"
    for profile in config["profiles"]:
        for patch in profile.get("patches", []):
            assert patch.get("op", "replace") in PATCH_OPS


def test_profiles_private_public_and_two_sites(config):
    assert [p["name"] for p in config["profiles"]] == ["private", "public", "site-a", "site-b"]


@pytest.mark.parametrize("profile", ["", "private", "public", "site-a", "site-b"])
def test_each_profile_patches_cleanly_and_stays_valid(config, profile):
    patched = _profile_configs(config)[profile]
    assert check(patched, "SkaffoldConfig", f"skaffold.yaml -p {profile}") == []
    release = patched["deploy"]["helm"]["releases"][0]
    for values in release["valuesFiles"]:
        assert (ROOT / values).is_file(), values
    assert bool(release["valuesFiles"]) == bool(profile)


def test_the_check_catches_what_skaffold_would_reject():
    """Typos the real schema rejects are caught by the transcription too."""
    bad = {"apiVersion": "skaffold/v4beta13", "kind": "Config",
           "build": {"artifacts": [{"image": "x", "custom": {"buildCmd": "b"},
                                    "docker": {}}]},
           "deploy": {"helm": {"releases": [{"chartPath": "c", "valueFiles": [],
                                             "wait": "yes"}]}},
           "profiles": [{"patches": [{"op": "replace"}]}]}
    text = "\n".join(check(bad, "SkaffoldConfig", "bad"))
    for expected in ("no property 'buildCmd'", "more than one builder",
                     "requires 'name'", "no property 'valueFiles'", "expected bool",
                     "requires 'path'"):
        assert expected in text, text


def _image_var(image: str) -> str:
    """Skaffold's template name of an artifact: non-alphanumerics become underscores."""
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def test_artifacts_are_containerfile_targets_built_by_podman(config):
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", CONTAINERFILE.read_text(), re.M))
    for artifact in config["build"]["artifacts"]:
        command = artifact["custom"]["buildCommand"].split()
        script = ROOT / command[0]
        assert script.is_file() and os.access(script, os.X_OK), command[0]
        assert command[1] in targets
        assert artifact["image"] == f"volte-{command[1]}"


@pytest.mark.parametrize("profile", ["", "private", "public", "site-a", "site-b"])
def test_helm_release_renders_with_skaffold_images(config, profile):
    """The release as skaffold would run it: valuesFiles + setValueTemplates with built images."""
    patched = _profile_configs(config)[profile]
    release = patched["deploy"]["helm"]["releases"][0]
    assert (ROOT / release["chartPath"]) == CHART
    variables: dict[str, str] = {}
    for artifact in patched["build"]["artifacts"]:
        name = _image_var(artifact["image"])
        variables[f"IMAGE_REPO_{name}"] = f"registry.example/volte/{artifact['image']}"
        variables[f"IMAGE_TAG_{name}"] = "abc123"
        variables[f"IMAGE_DIGEST_{name}"] = "sha256:" + "0" * 64
    args = ["template", release["name"], str(CHART), "--namespace", release["namespace"]]
    for values in release["valuesFiles"]:
        args += ["-f", str(ROOT / values)]
    for key, template in release["setValueTemplates"].items():
        value = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], template)
        args += ["--set", f"{key}={value}"]
    out = helm_run(*args).stdout
    images = set(re.findall(r"image: (\S+)", out))
    built = {i for i in images if i.startswith("registry.example/volte/")}
    assert built, images
    for image in built:
        assert re.fullmatch(r"registry\.example/volte/volte-[a-z-]+:abc123@sha256:0{64}", image)
    # Every volte image the chart runs is one that skaffold builds.
    assert not {i for i in images if "volte-" in i and i not in built}
