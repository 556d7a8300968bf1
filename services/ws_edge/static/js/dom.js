// Building DOM nodes. Text from users and services only ever goes through textContent
// (or attributes set one by one): nothing is parsed as HTML anywhere in the console.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);  // strings become text nodes
  }
  return node;
}

export function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`console markup has no #${id}`);
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

export function showError(node, error) {
  node.textContent = error ? describeError(error) : "";
  node.hidden = !error;
}

export function describeError(error) {
  if (typeof error === "string") return error;
  if (error && error.code && error.message) return `${error.code}: ${error.message}`;
  return (error && error.message) || String(error);
}

export function clock(seconds) {
  const when = seconds ? new Date(seconds * 1000) : new Date();
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

export function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

export function bytes(count) {
  if (count < 1024) return `${count} B`;
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(1)} kB`;
  return `${(count / 1024 / 1024).toFixed(1)} MB`;
}

export function number(value) {
  return Math.round(value).toLocaleString("en-US");
}
