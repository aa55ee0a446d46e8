"""Custom resources against their CRD's structural schema: pruning, defaulting, validation and CEL rules,
with error messages shaped like the real API server's (`spec.epochs: Invalid value: 0: ...`)."""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

ROOT_FIELDS = ("apiVersion", "kind", "metadata")

try:  # CEL rules (x-kubernetes-validations) are evaluated when cel-python is installed.
    import celpy
    import celpy.celtypes
    CEL_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    celpy = None
    CEL_AVAILABLE = False


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any) -> str:
    """A value as the real server prints it in `Invalid value: ...`."""
    if isinstance(value, (dict, list)) or value is None:
        return json.dumps(_json_type(value))
    return json.dumps(value)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------- pruning

def prune(value: Any, schema: dict[str, Any] | None, path: str, unknown: list[str], *, root: bool = False) -> Any:
    """Drop fields the schema does not declare (unless it preserves unknown fields); record their paths."""
    if schema is None or not isinstance(value, (dict, list)):
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [prune(item, items, f"{path}[{i}]", unknown) for i, item in enumerate(value)] if items else value
    if schema.get("x-kubernetes-embedded-resource"):
        return value
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    result = {}
    for key, item in value.items():
        if root and key in ROOT_FIELDS:
            result[key] = item
        elif properties is not None and key in properties:
            result[key] = prune(item, properties[key], _child(path, key), unknown)
        elif isinstance(additional, dict):
            result[key] = prune(item, additional, _child(path, key), unknown)
        elif additional is True or preserve or (properties is None and additional is None and not root and
                                                   schema.get("type") != "object"):
            result[key] = item
        elif additional is False:
            result[key] = item  # reported by validation as a forbidden property
        else:
            unknown.append(_child(path, key))
    return result


# ------------------------------------------------------------------------------------------- defaulting

def apply_defaults(value: Any, schema: dict[str, Any] | None) -> Any:
    """Fill in `default`s of absent properties, recursively, like the real server's structural defaulting."""
    if schema is None:
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in value:
                if key not in properties:
                    value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


# ------------------------------------------------------------------------------------------- validation

def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    expected = schema.get("type")
    if not expected:
        return True
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


@functools.lru_cache(maxsize=512)
def _cel_program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _to_cel(value: Any) -> Any:
    return celpy.json_to_cel(value)


def _cel_errors(rules: list[dict[str, Any]], value: Any, old: Any, has_old: bool, path: str) -> list[str]:
    errors: list[str] = []
    for rule_spec in rules:
        rule = rule_spec.get("rule", "")
        is_transition = "oldSelf" in rule
        if is_transition and not has_old and not rule_spec.get("optionalOldSelf"):
            continue  # transition rules apply only to updates that had the field before
        activation = {"self": _to_cel(value)}
        if is_transition:
            activation["oldSelf"] = _to_cel(old) if has_old else None
        shown = json.dumps(_json_type(value))  # a duplicate names the type
        field = path
        if rule_spec.get("fieldPath"):
            field = path + rule_spec["fieldPath"] if rule_spec["fieldPath"].startswith(".") else rule_spec["fieldPath"]
        try:
            program = _cel_program(rule)
        except Exception as error:  # noqa: BLE001 - a rule cel-python cannot compile is skipped, not enforced
            _warn_uncompilable(rule, error)
            continue
        try:
            result = program.evaluate(activation)
        except Exception as error:  # noqa: BLE001 - evaluation errors reject the object, as on a real server
            result = error
        if isinstance(result, Exception):
            detail = result.args[0] if result.args and isinstance(result.args[0], str) else str(result)
            errors.append(f"{field or '<nil>'}: Invalid value: {detail} evaluating rule: {rule}")
        elif not bool(result):
            message = rule_spec.get("message") or f"failed rule: {rule}"
            reason = rule_spec.get("reason", "FieldValueInvalid")
            if reason == "FieldValueForbidden":
                errors.append(f"{field or '<nil>'}: Forbidden: {message}")
            elif reason == "FieldValueRequired":
                errors.append(f"{field or '<nil>'}: Required value: {message}")
            elif reason == "FieldValueDuplicate":
                errors.append(f"{field or '<nil>'}: Duplicate value: {shown}: {message}")
            else:  # Kubernetes 1.36 prints the rule's message without the value
                errors.append(f"{field or '<nil>'}: Invalid value: {message}")
    return errors


_MISSING = object()
_warned_rules: set[str] = set()


def _warn_uncompilable(rule: str, error: Exception) -> None:
    if rule not in _warned_rules:
        _warned_rules.add(rule)
        logger.warning("CEL rule not enforced (cel-python cannot compile it): %s: %s", rule, error)


def validate(value: Any, schema: dict[str, Any] | None, path: str, errors: list[str],
             old: Any = _MISSING, *, root: bool = False, cel: list[tuple] | None = None) -> None:
    """Check value against a structural schema node; append messages in the real server's format.

    ``cel`` collects the CEL rules to run (rules, value, old, path) instead of running them: the real
    server runs them only once the whole object passed the schema."""
    if schema is None:
        return
    if old is not _MISSING and not root and value == old:
        # Validation ratcheting (Kubernetes 1.30+): an update leaves a value as it was, so it is not
        # checked again. A status write re-checks neither the spec nor its CEL rules.
        return
    shown_path = path or "<nil>"
    if value is None:
        if not schema.get("nullable"):
            errors.append(f'{shown_path}: Invalid value: "null": {shown_path} in body must be of type '
                          f'{schema.get("type", "object")}: "null"')
        return
    if not _type_ok(value, schema):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        errors.append(f'{shown_path}: Invalid value: "{_json_type(value)}": {shown_path} in body must be of type '
                      f'{expected}: "{_json_type(value)}"')
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append(f"{shown_path}: Unsupported value: {json.dumps(value)}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            if schema.get("exclusiveMinimum") is True and value <= schema["minimum"]:
                errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be "
                              f"greater than {schema['minimum']}")
            elif value < schema["minimum"]:
                errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be "
                              f"greater than or equal to {schema['minimum']}")
        if "maximum" in schema:
            if schema.get("exclusiveMaximum") is True and value >= schema["maximum"]:
                errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be "
                              f"less than {schema['maximum']}")
            elif value > schema["maximum"]:
                errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be "
                              f"less than or equal to {schema['maximum']}")
        if schema.get("multipleOf") and value % schema["multipleOf"]:
            errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be a "
                          f"multiple of {schema['multipleOf']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{shown_path}: Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should be at least "
                          f"{schema['minLength']} chars long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body should match "
                          f"'{schema['pattern']}'")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{shown_path}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{shown_path}: Invalid value: {len(value)}: {shown_path} in body should have at least "
                          f"{schema['minItems']} items")
        if schema.get("uniqueItems") or schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    errors.append(f"{path}[{index}]: Duplicate value: {_show(item)}")
                seen.append(item)
        items = schema.get("items")
        for index, item in enumerate(value):
            validate(item, items, f"{path}[{index}]", errors, cel=cel)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{_child(path, key)}: Required value")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{shown_path}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(f"{shown_path}: Invalid value: {len(value)}: {shown_path} in body should have at least "
                          f"{schema['minProperties']} properties")
        old_map = old if isinstance(old, dict) else {}
        for key, item in value.items():
            if root and key in ROOT_FIELDS:
                continue
            old_item = old_map.get(key, _MISSING)
            if key in properties:
                validate(item, properties[key], _child(path, key), errors, old_item, cel=cel)
            elif isinstance(additional, dict):
                validate(item, additional, _child(path, key), errors, old_item, cel=cel)
            elif additional is False:
                errors.append(f'{_child(path, key)}: Invalid value: {json.dumps(key)}: {_child(path, key)} in body '
                              f'is a forbidden property')
    for combinator in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(combinator) or []:
            if combinator == "allOf":
                validate(value, sub, path, errors, old, cel=cel)
        if combinator in ("anyOf", "oneOf") and schema.get(combinator):
            passing = 0
            for sub in schema[combinator]:
                sub_errors: list[str] = []
                validate(value, sub, path, sub_errors, old)
                passing += not sub_errors
            if passing == 0 or (combinator == "oneOf" and passing > 1):
                errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body must "
                              f"validate {'exactly one' if combinator == 'oneOf' else 'at least one'} schema "
                              f"({combinator})")
    if schema.get("not"):
        sub_errors = []
        validate(value, schema["not"], path, sub_errors, old)
        if not sub_errors:
            errors.append(f"{shown_path}: Invalid value: {_show(value)}: {shown_path} in body must not validate "
                          f"the schema (not)")
    rules = schema.get("x-kubernetes-validations")
    if rules and CEL_AVAILABLE:
        if cel is not None:
            cel.append((rules, value, None if old is _MISSING else old, old is not _MISSING, path))
        else:
            errors.extend(_cel_errors(rules, value, None if old is _MISSING else old, old is not _MISSING, path))


CEL_SKIPPED = ("<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
               "correct the existing errors to complete validation")


def _has_rules(schema: Any) -> bool:
    """Whether a schema declares any CEL rule, at any depth."""
    if isinstance(schema, dict):
        return bool(schema.get("x-kubernetes-validations")) or any(_has_rules(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_rules(v) for v in schema)
    return False


def admit_custom_resource(obj: dict[str, Any], schema: dict[str, Any] | None,
                          old: dict[str, Any] | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Prune, default and validate a custom resource; returns (object, unknown field paths, errors)."""
    if schema is None:
        return obj, [], []
    unknown: list[str] = []
    pruned = prune(obj, schema, "", unknown, root=True)
    defaulted = apply_defaults(pruned, schema)
    errors: list[str] = []
    cel: list[tuple] = []
    validate(defaulted, schema, "", errors, old if old is not None else _MISSING, root=True, cel=cel)
    if errors:
        if CEL_AVAILABLE and _has_rules(schema):
            errors.append(CEL_SKIPPED)  # as the real server: rules run only on an object the schema accepts
    else:
        for rules, value, old_value, has_old, path in cel:
            errors.extend(_cel_errors(rules, value, old_value, has_old, path))
    return defaulted, unknown, errors
