"""What an anchor record is valid for: the part of the prompt that the sampler depends on.

The runner queues one prompt per chunk of views, changing only LoadViewSet's ``views`` (and the output subfolder, which
no sampler reads). So the record made while the anchors were sampled is valid for a later prompt exactly when the
ancestors of the sampler that uses the cross-view model (model files, prompt text, seed, strength, ControlNet, view set)
are the same apart from the selection and the chunk size. Works on API-format prompts ({id: {class_type, inputs}}, links
are [node id, output slot]).
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable

# What only decides which views a prompt samples and how they are batched: the runner's chunk prompts differ in the
# selection, and chunking changes no view (the anchors are one batch, the rest attend only to the record).
CHUNKING_INPUTS = {("LoadViewSet", "views"), ("LoadViewSet", "views_per_chunk"), ("MemoryPreset", "views_per_chunk")}


def _links(inputs: dict) -> list[str]:
    return [str(v[0]) for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)]


def sampling_subgraph(prompt: dict, node_id: str, is_sampler: Callable[[str], bool]) -> dict:
    """The nodes the samplers downstream of ``node_id`` depend on, with the chunking inputs blanked.

    A sampler is the first node on each downstream path for which ``is_sampler(class_type)`` holds (a node that
    outputs LATENT). Without any, the whole ancestry of ``node_id``'s consumers is used.
    """
    consumers: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        for src in _links(node.get("inputs", {})):
            consumers.setdefault(src, []).append(str(nid))
    samplers, seen, todo = set(), set(), [str(node_id)]
    while todo:
        for c in consumers.get(todo.pop(), []):
            if c in seen:
                continue
            seen.add(c)
            if is_sampler(prompt[c]["class_type"]):
                samplers.add(c)
            else:
                todo.append(c)
    roots = samplers or seen or {str(node_id)}
    keep, todo = set(), list(roots)
    while todo:
        nid = todo.pop()
        if nid in keep or nid not in prompt:
            continue
        keep.add(nid)
        todo += _links(prompt[nid].get("inputs", {}))
    out = {}
    for nid in sorted(keep):
        node = prompt[nid]
        inputs = {k: ("<chunking>" if (node["class_type"], k) in CHUNKING_INPUTS else v)
                  for k, v in node.get("inputs", {}).items()}
        out[nid] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def graph_key(subgraph: dict) -> str:
    return hashlib.sha256(json.dumps(subgraph, sort_keys=True, default=str).encode()).hexdigest()


def differences(old: dict, new: dict, most: int = 3) -> list[str]:
    """Readable differences between two sampling subgraphs ('LightningLoader.lightning_file: a -> b')."""
    out = []
    for nid in sorted(set(old) | set(new)):
        a, b = old.get(nid), new.get(nid)
        if a is None or b is None or a["class_type"] != b["class_type"]:
            node = a or b
            out.append(f"node {nid} ({node['class_type']}) {'added' if a is None else 'removed or replaced'}")
            continue
        for k in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(k) != b["inputs"].get(k):
                out.append(f"{a['class_type']}.{k}: {a['inputs'].get(k)!r} -> {b['inputs'].get(k)!r}")
    return out[:most] + ([f"... {len(out) - most} more"] if len(out) > most else [])
