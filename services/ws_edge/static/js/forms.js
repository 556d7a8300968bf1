// Inputs built from an argument schema (a job's args, a report's params) and read back
// into typed JSON values. Kinds: int, float, str (with choices: a select), bool,
// str_list (comma separated; with choices: a multiple select), json, and the rest as text.

import { el } from "./dom.js";

export function buildFields(container, schema, prefix) {
  container.replaceChildren();
  for (const [name, spec] of Object.entries(schema)) {
    const id = `${prefix}-${name}`;
    const input = fieldFor(spec, id);
    input.name = name;
    input.dataset.kind = spec.kind;
    // Free text (a path, a list of them) gets the row's spare width; other fields their own.
    const text = input.type === "text" ? " text" : "";
    const label = el("label", { for: id, class: `field kind-${spec.kind}${text}`, title: spec.help || "" },
      el("span", { class: "field-name", text: name }), input);
    container.append(label);
  }
}

function fieldFor(spec, id) {
  const value = spec.default;
  if (spec.kind === "bool") {
    return el("input", { id, type: "checkbox", checked: value === true });
  }
  if (spec.choices && spec.kind === "str_list") {
    // Nothing selected leaves the argument out: the service's default applies.
    const chosen = new Set(Array.isArray(value) ? value : []);
    return el("select", { id, multiple: true, size: Math.min(spec.choices.length, 4) },
      ...spec.choices.map((choice) => el("option", { value: choice, selected: chosen.has(choice), text: choice })));
  }
  if (spec.choices) {
    return el("select", { id }, ...spec.choices.map(
      (choice) => el("option", { value: choice, selected: choice === value, text: choice })));
  }
  if (spec.kind === "int" || spec.kind === "float") {
    return el("input", {
      id, type: "number", value: value ?? "", step: spec.kind === "int" ? "1" : "any",
      min: spec.minimum, max: spec.maximum, required: value === undefined,
    });
  }
  if (spec.kind === "json") {
    // A required value starts empty: "null" would be sent as the value.
    const text = value === undefined ? "" : JSON.stringify(value);
    return el("textarea", { id, rows: 2, spellcheck: "false", text, required: value === undefined });
  }
  const text = Array.isArray(value) ? value.join(", ") : value ?? "";
  return el("input", { id, type: "text", value: text, required: value === undefined });
}

export class FieldError extends Error {}

// The values, typed; fields left empty are left out (the service's default applies).
export function readFields(container) {
  const values = {};
  for (const input of container.querySelectorAll("[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "bool") {
      values[input.name] = input.checked;
      continue;
    }
    if (input.multiple) {
      const chosen = [...input.selectedOptions].map((option) => option.value);
      if (chosen.length > 0) values[input.name] = chosen;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    if (kind === "int" || kind === "float") {
      const value = Number(raw);
      if (!Number.isFinite(value) || (kind === "int" && !Number.isInteger(value))) {
        throw new FieldError(`${input.name} must be ${kind === "int" ? "a whole number" : "a number"}`);
      }
      values[input.name] = value;
    } else if (kind === "str_list") {
      values[input.name] = raw.split(",").map((item) => item.trim()).filter(Boolean);
    } else if (kind === "json") {
      try {
        values[input.name] = JSON.parse(raw);
      } catch (error) {
        throw new FieldError(`${input.name} is not valid JSON: ${error.message}`);
      }
    } else {
      values[input.name] = raw;
    }
  }
  return values;
}
