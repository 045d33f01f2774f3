"""ComfyUI's two workflow formats, converted both ways from a server's ``/object_info``, without importing ComfyUI.

* **Canvas** (what the browser saves and opens; LiteGraph): ``nodes`` (id, type, pos, size, inputs, outputs,
  widgets_values, mode ...), ``links`` as ``[id, from_node, from_slot, to_node, to_slot, type]``, ``groups``, and
  frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) that never reach the server.
* **API** (what ``POST /prompt`` takes and what the headless runner queues): ``{"<id>": {"class_type": ...,
  "inputs": {name: value | [from_id, from_slot]}, "_meta": {"title": ...}}}``.

A canvas node keeps its widget values as a positional list, whose entries :mod:`tools.node_widgets` assigns to inputs as
the frontend does. A canvas node's ``inputs`` lists its sockets first, then the widget inputs that are linked
(``"widget": {"name": ...}``); links address inputs by their index in that list.

``canvas_to_api`` does what the frontend's "Export (API)" does: muted nodes (mode 2) are dropped, bypassed nodes
(mode 4) pass their input of the same type through, Reroutes are followed, a link from a PrimitiveNode leaves the
widget's own value, and every node type must exist in ``object_info``. ``api_to_canvas`` lays an API workflow out
on the canvas from a ``layout`` (positions, sizes, titles, groups, Note/MarkdownNote nodes). Together they keep a
bundled canvas workflow and its API twin the same graph with the same values (``build_workflows.py`` next to
this module; the pack itself never converts, so this lives with the generator and does not ship).
"""
from __future__ import annotations

import copy
import uuid

from tools.node_widgets import default_value, extra_entry, inputs_in_order, is_widget, type_name, widget_slots

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # the frontend's own Note colours
SLOT_HEIGHT, WIDGET_HEIGHT = 20, 24  # LiteGraph row heights, for the default node size
OPTIONAL_SHAPE, LIST_SHAPE = 7, 6  # LiteGraph slot shapes the frontend gives optional inputs and list outputs
WORKFLOW_NAMESPACE = uuid.UUID("6f1b6d4e-6f3a-4a59-9b1c-1f2d3c4b5a69")


class WorkflowFormatError(ValueError):
    """A workflow that cannot be converted (wrong format, unknown node type, broken link)."""


class UnknownNodeTypes(WorkflowFormatError):
    """Node types absent from ``object_info`` (a node pack that is not installed or failed to import)."""

    def __init__(self, types: dict[str, list[str]]):
        self.types = types
        listed = "; ".join(f"{t} (node {', '.join(ids)})" for t, ids in sorted(types.items()))
        super().__init__(f"node types missing from this ComfyUI's /object_info: {listed}")


# -- workflows -------------------------------------------------------------------------------------------------------

def missing_node_types(types_by_id: dict[str, str], object_info: dict) -> dict[str, list[str]]:
    """{type: [node ids]} of the node types that ``object_info`` lacks."""
    missing: dict[str, list[str]] = {}
    for nid, t in types_by_id.items():
        if t not in object_info:
            missing.setdefault(t, []).append(str(nid))
    return missing


def node_types(workflow: dict) -> dict[str, str]:
    """{node id: type} of a canvas or API workflow, frontend-only canvas nodes left out."""
    if is_canvas(workflow):
        return {str(n["id"]): n["type"] for n in workflow["nodes"] if n.get("type") not in FRONTEND_ONLY}
    return {str(k): v["class_type"] for k, v in workflow.items()}


def is_canvas(data) -> bool:
    return isinstance(data, dict) and "nodes" in data and "links" in data


# -- canvas -> API ---------------------------------------------------------------------------------------------------

def _links(canvas: dict) -> dict[int, tuple]:
    """{link id: (from node, from slot, to node, to slot, type)}; list or object form."""
    out = {}
    for link in canvas.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                               link.get("type"))
        else:
            out[link[0]] = tuple(link[1:6])
    return out


def _input_name(slot: dict) -> str:
    widget = slot.get("widget")
    return widget["name"] if isinstance(widget, dict) and widget.get("name") else slot["name"]


class _Resolver:
    """Follows a link back to the node output it carries, through Reroutes and bypassed nodes."""

    VALUE = object()  # the link comes from a PrimitiveNode: the target widget's own value stands

    def __init__(self, canvas: dict):
        self.nodes = {n["id"]: n for n in canvas["nodes"]}
        self.links = _links(canvas)

    def __call__(self, link_id, seen=()):
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowFormatError(f"link {link_id} is referenced by a node but missing from the links list")
        src, slot, _, _, ltype = self.links[link_id]
        node = self.nodes.get(src)
        if node is None:
            raise WorkflowFormatError(f"link {link_id} comes from node {src}, which is not in the workflow")
        if src in seen:
            raise WorkflowFormatError(f"link {link_id} loops through node {src}")
        mode, ntype = node.get("mode", MODE_ALWAYS), node.get("type")
        if ntype == "PrimitiveNode":
            return self.VALUE
        if ntype == "Reroute":
            ins = node.get("inputs") or []
            return self(ins[0].get("link") if ins else None, (*seen, src))
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            ins = node.get("inputs") or []
            otype = ltype or ((node.get("outputs") or [{}])[slot].get("type") if slot < len(node.get("outputs") or [])
                              else None)
            order = ([ins[slot]] if slot < len(ins) else []) + ins
            for cand in order:
                if cand.get("link") is not None and cand.get("type") == otype:
                    return self(cand["link"], (*seen, src))
            return None
        return src, slot


def canvas_to_api(canvas: dict, object_info: dict) -> dict:
    """The API-format prompt the frontend would queue for ``canvas`` (every node type must be in object_info)."""
    if not is_canvas(canvas):
        raise WorkflowFormatError("not a canvas workflow (no top-level 'nodes' and 'links'); API-format workflows "
                                  "are already what the server takes")
    subgraphs = {s.get("id") for s in (canvas.get("definitions") or {}).get("subgraphs") or []}
    nodes = sorted(canvas["nodes"], key=lambda n: n["id"])
    live = [n for n in nodes if n.get("type") not in FRONTEND_ONLY and n.get("mode", MODE_ALWAYS) not in
            (MODE_NEVER, MODE_BYPASS)]
    nested = [str(n["id"]) for n in live if n.get("type") in subgraphs]
    if nested:
        raise WorkflowFormatError(f"nodes {', '.join(nested)} are subgraphs, which this converter does not unpack")
    missing = missing_node_types({str(n["id"]): n["type"] for n in live}, object_info)
    if missing:
        raise UnknownNodeTypes(missing)
    resolve = _Resolver(canvas)
    api = {}
    for node in live:
        spec = object_info[node["type"]]
        entries = {name: (entry, optional) for name, entry, optional in inputs_in_order(spec)}
        values = node.get("widgets_values")
        given: dict = {}
        if isinstance(values, dict):
            given = {k: v for k, v in values.items() if k in entries and is_widget(entries[k][0])}
        else:
            values = values or []
            for i, name in enumerate(widget_slots(spec)):
                if name is not None:
                    given[name] = values[i] if i < len(values) else default_value(entries[name][0])
        for slot in node.get("inputs") or []:
            name = _input_name(slot)
            src = resolve(slot.get("link"))
            if src is None or src is _Resolver.VALUE or name not in entries:
                continue
            given[name] = [str(src[0]), src[1]]
        inputs = {name: given[name] for name in entries if name in given}
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                "_meta": {"title": node.get("title") or spec.get("display_name") or node["type"]}}
    return api


# -- API -> canvas ---------------------------------------------------------------------------------------------------

def default_size(spec: dict, width: int = 300) -> list[int]:
    """A node size that fits its sockets and widgets (LiteGraph rows: 20 px per slot row, 24 per widget)."""
    sockets = [n for n, e, _ in inputs_in_order(spec) if not is_widget(e)]
    rows = max(len(sockets), len(spec.get("output", [])))
    widgets = widget_slots(spec)
    multiline = sum(1 for n, e, _ in inputs_in_order(spec) if is_widget(e) and e[1].get("multiline"))
    height = rows * SLOT_HEIGHT + (len(widgets) * WIDGET_HEIGHT + 14 if widgets else 6) + multiline * 60
    return [width, height]


def _node_id(nid: str) -> int:
    try:
        return int(nid)
    except (TypeError, ValueError):
        raise WorkflowFormatError(f"API node id {nid!r} is not a number; canvas node ids are integers") from None


def _topological(ids: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    """Execution order index per node (Kahn's algorithm, ties by id), as the frontend stores it in ``order``."""
    indeg = {i: 0 for i in ids}
    out: dict[int, list[int]] = {i: [] for i in ids}
    for a, b in edges:
        out[a].append(b)
        indeg[b] += 1
    ready = sorted(i for i in ids if indeg[i] == 0)
    order = {}
    while ready:
        i = ready.pop(0)
        order[i] = len(order)
        for j in out[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
                ready.sort()
    if len(order) != len(ids):
        raise WorkflowFormatError("the workflow has a cycle")
    return order


def group_bounding(members: list[dict], pad: int = 20, title_height: int = 50) -> list[float]:
    """[x, y, w, h] of a group around canvas nodes (node ``pos`` is below the title bar, 30 px high)."""
    x0 = min(n["pos"][0] for n in members) - pad
    y0 = min(n["pos"][1] for n in members) - 30 - title_height
    x1 = max(n["pos"][0] + n["size"][0] for n in members) + pad
    y1 = max(n["pos"][1] + n["size"][1] for n in members) + pad
    return [x0, y0, x1 - x0, y1 - y0]


def api_to_canvas(api: dict, object_info: dict, layout: dict | None = None, name: str = "workflow") -> dict:
    """A canvas workflow of the same graph and values as ``api``.

    ``layout``: ``{"nodes": {id: {"pos": [x, y], "size": [w, h], "width": w, "title": str, "color": str,
    "bgcolor": str}}, "groups": [{"title": str, "nodes": [ids], "color": str}], "notes": [{"text": str, "pos": [x, y],
    "size": [w, h], "type": "MarkdownNote" | "Note", "title": str}], "ds": {"scale": s, "offset": [x, y]}}``; every
    key optional. Node ids must be decimal strings. Notes get ids after the last node. A control widget (seed) is
    stored as "fixed", an upload widget as its kind, a linked widget's own value as its default.
    """
    layout = copy.deepcopy(layout or {})
    node_layout = {str(k): v for k, v in (layout.get("nodes") or {}).items()}
    missing = missing_node_types({k: v.get("class_type") for k, v in api.items()}, object_info)
    if missing:
        raise UnknownNodeTypes(missing)
    ids = sorted(api, key=_node_id)
    slots: dict[str, list[dict]] = {}
    for nid in ids:
        node = api[nid]
        if not isinstance(node.get("inputs"), dict):
            raise WorkflowFormatError(f"API node {nid} has no inputs object")
        spec = object_info[node["class_type"]]
        known = {n for n, _, _ in inputs_in_order(spec)}
        unknown = sorted(set(node["inputs"]) - known)
        if unknown:
            raise WorkflowFormatError(f"node {nid} ({node['class_type']}) has inputs {unknown} that its definition "
                                      f"lacks (it has {sorted(known)})")
        sockets, linked_widgets = [], []
        for iname, entry, optional in inputs_in_order(spec):
            value = node["inputs"].get(iname)
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
            slot = {"name": iname, "type": type_name(entry), "link": None}
            if optional:
                slot["shape"] = OPTIONAL_SHAPE
            if not is_widget(entry):
                sockets.append(slot)
            elif is_link:
                slot["widget"] = {"name": iname}
                linked_widgets.append(slot)
        slots[nid] = sockets + linked_widgets

    links, edges = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid in ids:
        for index, slot in enumerate(slots[nid]):
            value = api[nid]["inputs"].get(slot["name"])
            if not (isinstance(value, list) and len(value) == 2):
                continue  # an open socket: the server reports a required one; the canvas shows it empty
            src, src_slot = str(value[0]), value[1]
            if src not in api:
                raise WorkflowFormatError(f"node {nid} input {slot['name']} links to node {src}, which is missing")
            src_spec = object_info[api[src]["class_type"]]
            outputs = src_spec.get("output", [])
            if not 0 <= src_slot < len(outputs):
                raise WorkflowFormatError(f"node {nid} input {slot['name']} links to output {src_slot} of node {src} "
                                          f"({api[src]['class_type']}), which has {len(outputs)} outputs")
            link_id = len(links) + 1
            ltype = outputs[src_slot] if isinstance(outputs[src_slot], str) else "COMBO"
            links.append([link_id, _node_id(src), src_slot, _node_id(nid), index, ltype])
            slot["link"] = link_id
            out_links.setdefault((src, src_slot), []).append(link_id)
            edges.append((_node_id(src), _node_id(nid)))

    order = _topological([_node_id(n) for n in ids], edges)
    nodes = []
    for col, nid in enumerate(ids):
        node = api[nid]
        spec = object_info[node["class_type"]]
        entries = {n: e for n, e, _ in inputs_in_order(spec)}
        values, last = [], None
        for slot_name in widget_slots(spec):
            if slot_name is None:
                values.append(extra_entry(entries[last]))
                continue
            last = slot_name
            value = node["inputs"].get(slot_name, default_value(entries[slot_name]))
            values.append(default_value(entries[slot_name]) if isinstance(value, list) else value)
        is_list = spec.get("output_is_list") or []
        outputs = []
        for i, otype in enumerate(spec.get("output", [])):
            o = {"name": (spec.get("output_name") or [])[i] if i < len(spec.get("output_name") or []) else otype,
                 "type": otype if isinstance(otype, str) else "COMBO", "links": out_links.get((nid, i), []),
                 "slot_index": i}
            if i < len(is_list) and is_list[i]:
                o["shape"] = LIST_SHAPE
            outputs.append(o)
        lay = node_layout.get(nid, {})
        size = lay.get("size") or default_size(spec, lay.get("width", 300))
        canvas_node = {"id": _node_id(nid), "type": node["class_type"],
                       "pos": lay.get("pos", [col * 350, 0]), "size": size, "flags": {},
                       "order": order[_node_id(nid)], "mode": MODE_ALWAYS, "inputs": slots[nid], "outputs": outputs,
                       "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values}
        title = (node.get("_meta") or {}).get("title")
        if title and title != spec.get("display_name", node["class_type"]):
            canvas_node["title"] = title
        for key in ("color", "bgcolor"):
            if key in lay:
                canvas_node[key] = lay[key]
        nodes.append(canvas_node)

    next_id = max((_node_id(n) for n in ids), default=0) + 1
    for note in layout.get("notes") or []:
        ntype = note.get("type", "MarkdownNote")
        if ntype not in NOTE_TYPES:
            raise WorkflowFormatError(f"note type {ntype!r} is not one of {sorted(NOTE_TYPES)}")
        n = {"id": note.get("id", next_id), "type": ntype, "pos": note["pos"], "size": note.get("size", [400, 200]),
             "flags": {}, "order": len(nodes), "mode": MODE_ALWAYS, "inputs": [], "outputs": [], "properties": {},
             "widgets_values": [note["text"]], "color": note.get("color", NOTE_COLOR),
             "bgcolor": note.get("bgcolor", NOTE_BGCOLOR)}
        if note.get("title"):
            n["title"] = note["title"]
        next_id = max(next_id, n["id"]) + 1
        nodes.append(n)

    by_id = {str(n["id"]): n for n in nodes}
    groups = []
    for gid, group in enumerate(layout.get("groups") or [], start=1):
        members = [by_id[str(m)] for m in group.get("nodes", []) if str(m) in by_id]
        bounding = group.get("bounding") or (group_bounding(members) if members else None)
        if bounding is None:
            raise WorkflowFormatError(f"group {group.get('title')!r} has neither nodes nor a bounding box")
        groups.append({"id": gid, "title": group["title"], "bounding": bounding,
                       "color": group.get("color", "#3f789e"), "font_size": group.get("font_size", 24), "flags": {}})

    return {"id": str(uuid.uuid5(WORKFLOW_NAMESPACE, name)), "revision": 0,
            "last_node_id": max((n["id"] for n in nodes), default=0), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": layout.get("ds", {"scale": 0.6, "offset": [0, 0]})}, "version": 0.4}
