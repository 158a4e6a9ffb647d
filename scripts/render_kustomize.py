"""Render a kustomization of deploy/kubernetes without kustomize: the features its files use,
and nothing more. `kubectl kustomize DIR` is the real thing; this is for machines without it
(the test suite renders with both when kubectl is there, and requires the same documents).

    .venv/bin/python scripts/render_kustomize.py deploy/kubernetes > kyma.yaml

Supported: `resources` (files, and directories with a kustomization.yaml), `namespace`,
`labels` (pairs, on metadata only), `configMapGenerator` (files, with
disableNameSuffixHash), `images` (newName/newTag), and `patches` given by `path` with a
`target` kind/name, holding a JSON patch (add, replace, remove, test). Anything else is
refused with its name, so a new feature in the manifests cannot pass unrendered.
"""

from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any

import yaml

_KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "configMapGenerator",
    "images",
    "patches",
}
# Kinds without a namespace (kustomize leaves these as they are).
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class Unsupported(ValueError):
    pass


def render(directory: pathlib.Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize directory` would print."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(spec) - _KNOWN
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields not supported: {sorted(unknown)}")
    documents: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in spec.get("configMapGenerator", []):
        documents.append(_config_map(directory, generator))
    for patch in spec.get("patches", []):
        _patch(directory, documents, patch)
    for image in spec.get("images", []):
        _image(documents, image)
    for document in documents:
        metadata = document.setdefault("metadata", {})
        if "namespace" in spec and document["kind"] not in _CLUSTER_SCOPED:
            metadata["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            if set(label) - {"pairs"}:
                raise Unsupported(f"labels options: {sorted(set(label) - {'pairs'})}")
            metadata.setdefault("labels", {}).update(label["pairs"])
    return documents


def _config_map(directory: pathlib.Path, generator: dict[str, Any]) -> dict[str, Any]:
    if set(generator) - {"name", "files", "options"}:
        raise Unsupported(f"configMapGenerator fields: {sorted(generator)}")
    if generator.get("options") != {"disableNameSuffixHash": True}:
        raise Unsupported("configMapGenerator without options.disableNameSuffixHash: true")
    data = {}
    for name in generator["files"]:
        data[pathlib.Path(name).name] = (directory / name).read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": data,
    }


def _image(documents: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for document in documents:
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new = image.get("newName", name)
                container["image"] = (
                    f"{new}:{image.get('newTag', tag)}" if tag or "newTag" in image else new
                )


def _patch(directory: pathlib.Path, documents: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    if set(patch) - {"path", "target"} or set(patch.get("target", {})) - {"kind", "name"}:
        raise Unsupported(f"patch fields: {patch}")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise Unsupported(f"{patch['path']}: only JSON patches (a list of operations)")
    target = patch["target"]
    matched = [
        d
        for d in documents
        if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
    ]
    if not matched:
        raise ValueError(f"patch {patch['path']}: no {target['kind']} {target['name']}")
    for document in matched:
        for operation in operations:
            _apply(document, operation)


def _apply(document: dict[str, Any], operation: dict[str, Any]) -> None:
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        elif op == "test":
            if node[index] != operation["value"]:
                raise ValueError(f"test failed at {operation['path']}: {node[index]!r}")
        else:
            raise Unsupported(f"JSON patch op {op!r}")
        return
    if op in ("add", "replace"):
        if op == "replace" and last not in node:
            raise ValueError(f"replace of a missing {operation['path']}")
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    elif op == "test":
        if node.get(last) != operation["value"]:
            raise ValueError(f"test failed at {operation['path']}: {node.get(last)!r}")
    else:
        raise Unsupported(f"JSON patch op {op!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: render_kustomize.py DIRECTORY", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(pathlib.Path(argv[0])), sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
