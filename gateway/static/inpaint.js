// The inpaint editor: paint a mask over an image (brush size, eraser, clear), then prompt
// for the region. The mask sent is white where painted (repaint) and black elsewhere (keep).
import { imageUrl } from "./api.js";
import { announce } from "./dom.js";
import { t } from "./i18n.js";

const field = (id) => document.getElementById(id);
let current = null;
let painting = false;
let last = null;

function canvas() {
  return field("inpaint-canvas");
}

function point(event) {
  const box = canvas().getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) / box.width) * canvas().width,
    y: ((event.clientY - box.top) / box.height) * canvas().height,
  };
}

function stroke(from, to) {
  const ctx = canvas().getContext("2d");
  ctx.globalCompositeOperation = field("inpaint-eraser").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = "rgb(255 64 64)";
  ctx.fillStyle = "rgb(255 64 64)";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = Number(field("inpaint-brush").value);
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
}

/** The painted region as a black-and-white PNG (base64), or null when nothing is painted. */
function maskPng() {
  const source = canvas();
  const painted = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  const mask = document.createElement("canvas");
  mask.width = source.width;
  mask.height = source.height;
  const ctx = mask.getContext("2d");
  const out = ctx.createImageData(source.width, source.height);
  let any = false;
  for (let i = 0; i < painted.data.length; i += 4) {
    const on = painted.data[i + 3] > 0 ? 255 : 0;
    any ||= on > 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = on;
    out.data[i + 3] = 255;
  }
  if (!any) return null;
  ctx.putImageData(out, 0, 0);
  return mask.toDataURL("image/png").split(",")[1];
}

/** Open the editor on `image` (a gallery record). */
export function openInpaint(image) {
  current = image;
  const c = canvas();
  c.width = image.width;
  c.height = image.height;
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  field("inpaint-brush").max = String(Math.max(8, Math.round(Math.max(image.width, image.height) / 4)));
  field("inpaint-brush").value = String(Math.max(2, Math.round(Math.max(image.width, image.height) / 12)));
  field("inpaint-eraser").checked = false;
  field("inpaint-prompt").value = image.params.prompt;
  const img = field("inpaint-img");
  img.alt = image.prompt || image.id;
  img.style.aspectRatio = `${image.width} / ${image.height}`;
  imageUrl(image.url).then((url) => {
    img.src = url;
  });
  field("inpaint").showModal();
}

export function setupInpaint(submit) {
  const c = canvas();
  c.addEventListener("pointerdown", (event) => {
    painting = true;
    c.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  c.addEventListener("pointermove", (event) => {
    if (!painting) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel"]) {
    c.addEventListener(type, () => {
      painting = false;
    });
  }
  field("inpaint-clear").addEventListener("click", () => {
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  });
  field("inpaint-close").addEventListener("click", () => field("inpaint").close());
  field("inpaint").addEventListener("keydown", (event) => {
    const brush = field("inpaint-brush");
    if (event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement) return;
    if (event.key === "[") brush.value = String(Number(brush.value) - 2);
    if (event.key === "]") brush.value = String(Number(brush.value) + 2);
    if (event.key === "e") field("inpaint-eraser").click();
  });
  field("inpaint-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const mask = maskPng();
    if (!mask) {
      announce(t("inpaint.empty"), "error");
      return;
    }
    field("inpaint").close();
    submit(current, mask, field("inpaint-prompt").value.trim(), Number(field("inpaint-strength").value));
  });
}
