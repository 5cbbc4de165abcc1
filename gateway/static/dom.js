// Building DOM nodes safely: text is always set as text, never parsed as HTML.

/** `h("button", {class: "x", onclick: f, "aria-label": "y"}, "text", child)`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name in el && typeof value !== "string") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

const status = () => document.getElementById("status");

/** Say `message` in the polite live region (and show it briefly). */
export function announce(message, kind = "info") {
  const box = status();
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(announce.timer);
  announce.timer = setTimeout(() => {
    box.hidden = true;
  }, 5000);
}
