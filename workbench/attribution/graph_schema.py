"""The graph JSON format's schema and its validation, for :mod:`.graph_file` (which documents the
format, step by step).

- :data:`GRAPH_JSON_SCHEMA`: a JSON Schema (draft 7) for circuit-tracer's / Neuronpedia's graph files,
  written from circuit-tracer's ``frontend/graph_models.py`` and Neuronpedia's ``graph-schema.json``,
  plus our namespaced ``wb`` fields (which, once ``metadata.wb`` is present, every node must carry).
- :func:`validate_graph_json`: the schema first (links, up to ~10^6 of them, checked by hand when they
  are plain, since the validator costs ~25 us each), then that node ids are unique and that every link
  names nodes. Errors name the file and the field (``nodes[3].feature_type: 'foo' is not one of ...``).
"""

from __future__ import annotations

from jsonschema import Draft7Validator

from workbench.attribution.graph import NODE_KINDS

# feature_type -> our node kind. The first four are circuit-tracer's; the rest appear in Neuronpedia
# files (lorsa attention features, bias and unknown nodes) and in Anthropic's original viewer.
FEATURE_TYPE_KINDS = {"cross layer transcoder": "feature", "mlp reconstruction error": "error",
                      "embedding": "token", "logit": "logit", "lorsa": "feature", "lorsa error": "error",
                      "unexplored node": "feature", "bias": "other", "unknown": "other"}
FILE_NODE_KINDS = (*NODE_KINDS, "other")
WB_TENSORS = ("adjacency", "values", "bias", "activations", "logit_probabilities")  # dtypes kept in wb

_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_NUM_OR_NULL, _STRINGS = {"type": ["number", "null"]}, {"type": "array", "items": {"type": "string"}}
_FLOAT_DTYPE = {"enum": ["float16", "bfloat16", "float32", "float64"]}
_WB = {"type": "object",
       "required": ["format_version", "n_layers", "n_pos", "n_nodes", "pruned", "input_tokens",
                    "token_strings", "logit_tokens", "logit_labels", "logit_probabilities", "dtypes",
                    "graph_metadata"],
       "properties": {"dtypes": {"type": "object", "required": list(WB_TENSORS),
                                 "properties": dict.fromkeys(WB_TENSORS, _FLOAT_DTYPE)}}}
GRAPH_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Attribution graph: circuit-tracer / Neuronpedia graph JSON, plus workbench wb fields",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {"type": "object", "required": ["slug", "scan", "prompt_tokens", "prompt"],
                     "properties": {
            "slug": _STR, "scan": _STR, "prompt_tokens": _STRINGS, "prompt": _STR,
            "transcoder_list": _STRINGS,
            "node_threshold": _NUM_OR_NULL, "schema_version": {"type": ["integer", "null"]},
            "info": {"type": "object"}, "feature_details": {"type": "object"},
            "generation_settings": {"type": "object"}, "pruning_settings": {"type": "object"}, "wb": _WB}},
        "qParams": {"type": "object", "properties": {
            "pinnedIds": _STRINGS, "supernodes": {"type": "array", "items": _STRINGS},
            "linkType": _STR, "clickedId": _STR, "sg_pos": _STR}},
        "nodes": {"type": "array", "items": {
            "type": "object",
            "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
            "properties": {
                "node_id": {"type": "string", "minLength": 1}, "feature": {"type": ["integer", "null"]},
                "layer": {"type": ["string", "integer"]}, "ctx_idx": {"type": "integer", "minimum": 0},
                "feature_type": {"enum": list(FEATURE_TYPE_KINDS)}, "token_prob": _NUM,
                "is_target_logit": {"type": "boolean"}, "run_idx": _INT, "reverse_ctx_idx": _INT,
                "jsNodeId": _STR, "clerp": _STR, "influence": _NUM_OR_NULL, "activation": _NUM_OR_NULL,
                "wb_index": {"type": "integer", "minimum": 0}, "wb_value": _NUM, "wb_bias": _NUM}}},
        "links": {"type": "array", "items": {
            "type": "object", "required": ["source", "target", "weight"],
            "properties": {"source": _STR, "target": _STR, "weight": _NUM}}},
    },
    # A file that carries metadata.wb (written here) must carry the per-node wb fields as well.
    "if": {"required": ["metadata"], "properties": {"metadata": {"required": ["wb"]}}},
    "then": {"properties": {"nodes": {"items": {"required": ["wb_index", "wb_value", "wb_bias"]}}}},
}
_VALIDATOR = Draft7Validator(GRAPH_JSON_SCHEMA)
_LINK_VALIDATOR = Draft7Validator(GRAPH_JSON_SCHEMA["properties"]["links"]["items"])


class GraphFileError(ValueError):
    """A graph file that does not follow the format; the message names the file and the field."""


def _problem(path, message: str) -> str:
    """``nodes[3].feature_type: 'foo' is not one of [...]``; long values (a whole node) are cut short."""
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = message if len(message) <= 300 else message[:297] + "..."
    return f"{where}: {message}" if where else message


def _schema_problems(doc) -> list[str]:
    links = doc.get("links") if isinstance(doc, dict) else None
    if not isinstance(links, list):
        return [_problem(e.absolute_path, e.message) for e in _VALIDATOR.iter_errors(doc)]
    # Graphs carry up to ~10^6 links and jsonschema takes ~25 us for each, so plain links are checked by
    # hand and only the others go through the schema, which still words every message.
    problems = [_problem(e.absolute_path, e.message) for e in _VALIDATOR.iter_errors(dict(doc, links=[]))]
    for i, link in enumerate(links):
        if not (type(link) is dict and type(link.get("source")) is str and type(link.get("target")) is str
                and type(link.get("weight")) in (int, float)):
            problems += [_problem(("links", i, *e.absolute_path), e.message)
                         for e in _LINK_VALIDATOR.iter_errors(link)]
    return problems


def _reference_problems(doc: dict) -> list[str]:
    problems, seen = [], {}
    for i, node in enumerate(doc["nodes"]):
        if node["node_id"] in seen:
            problems.append(f"nodes[{i}].node_id {node['node_id']!r} repeats nodes[{seen[node['node_id']]}] "
                            "(older circuit-tracer error ids 0_{layer}_{pos} can collide with features)")
        seen.setdefault(node["node_id"], i)
    for i, link in enumerate(doc["links"]):
        problems += [f"links[{i}].{end} {link[end]!r} is not the node_id of any node"
                     for end in ("source", "target") if link[end] not in seen]
    return problems


def validate_graph_json(doc, source: str = "graph") -> None:
    """Raise :class:`GraphFileError` naming ``source`` and the first few bad fields."""
    problems = _schema_problems(doc) or _reference_problems(doc)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise GraphFileError(f"graph file {source}: " + "; ".join(problems[:5]) + more)
