// The Create page: prompt, advanced settings, style presets, and the results of each run
// (a grid of pictures with live progress, then U / V / reroll / download per picture).
import { api, imageUrl, postEvents } from "./api.js";
import { $, announce, h } from "./dom.js";
import { onLanguage, t } from "./i18n.js";
import { openInpaint, setupInpaint } from "./inpaint.js";

const SIZES = [
  ["1:1", 512, 512],
  ["3:2", 768, 512],
  ["2:3", 512, 768],
  ["4:3", 640, 480],
  ["3:4", 480, 640],
  ["16:9", 896, 512],
  ["9:16", 512, 896],
];
const PREVIEW = { every_n_steps: 1, max_size: 256 };
const selectedStyles = new Set();

const field = (id) => document.getElementById(id);
const numberOf = (id) => Number(field(id).value);

function option(value, label, selected = false) {
  return h("option", { value, selected }, label);
}

// -- settings lists -------------------------------------------------------------------------

async function loadModels() {
  const reply = await api("/v1/models");
  const checkpoints = reply.models.filter((m) => m.kind === "checkpoint");
  const vaes = reply.models.filter((m) => m.kind === "vae");
  field("model").replaceChildren(
    option("", `${t("create.defaultModel")} (${reply.default_checkpoint || "—"})`),
    ...checkpoints.map((m) => option(m.name, m.name)),
  );
  field("vae").replaceChildren(
    option("", t("create.defaultVae")),
    ...vaes.map((m) => option(m.name, m.name)),
  );
  // TAESD previews need a decoder in the store; offered only when there is one.
  const taesd = field("preview-method").querySelector('option[value="TAESD"]');
  taesd.hidden = taesd.disabled = !reply.models.some((m) => m.kind === "vae_approx");
}

async function loadSamplers() {
  const samplers = await api("/v1/samplers");
  field("sampler").replaceChildren(
    ...samplers.map((s) => option(s.name, s.name, s.name === "Euler a")),
  );
}

async function loadUpscalers() {
  const upscalers = (await api("/v1/upscalers")).filter((u) => u.name !== "Latent");
  field("upscaler").replaceChildren(
    ...upscalers.map((u) => option(u.name, u.name, u.name === "Lanczos")),
  );
}

function fillSizes() {
  const current = field("size").value;
  field("size").replaceChildren(
    ...SIZES.map(([ratio, w, hgt]) => option(ratio, `${ratio} · ${w}×${hgt}`)),
    option("custom", t("create.custom")),
  );
  field("size").value = current || "1:1";
}

function syncSizeSelect() {
  const match = SIZES.find(([, w, hgt]) => w === numberOf("width") && hgt === numberOf("height"));
  field("size").value = match ? match[0] : "custom";
}

async function loadStyles() {
  const grid = field("style-grid");
  const styles = await api("/v1/styles");
  if (!styles.length) {
    grid.replaceChildren(h("p", { class: "muted", "data-i18n": "create.noStyles" }, t("create.noStyles")));
    return;
  }
  grid.replaceChildren(...styles.map(styleCard));
}

function styleCard(style) {
  const picture = h("span", { class: "style-picture", "aria-hidden": "true" });
  if (style.preview_url) {
    imageUrl(style.preview_url)
      .then((url) => picture.append(h("img", { src: url, alt: "" })))
      .catch(() => {});
  } else {
    picture.textContent = (style.title || style.name).slice(0, 1).toUpperCase();
  }
  const words = style.trigger_words.join(", ");
  const button = h(
    "button",
    {
      type: "button",
      class: "style-card",
      "aria-pressed": String(selectedStyles.has(style.name)),
      dataset: { style: style.name },
      title: [style.lora ? `<lora:${style.lora}:${style.weight}>` : "", words]
        .filter(Boolean)
        .join(" · "),
    },
    picture,
    h("span", { class: "style-title" }, style.title || style.name),
    style.category ? h("span", { class: "style-category" }, style.category) : null,
  );
  button.addEventListener("click", () => {
    if (selectedStyles.has(style.name)) selectedStyles.delete(style.name);
    else selectedStyles.add(style.name);
    button.setAttribute("aria-pressed", String(selectedStyles.has(style.name)));
  });
  return button;
}

// -- prompt builder (seed: subject, action, features, viewpoint, light/quality) ----------

const CATEGORIES = ["subject", "action", "features", "viewpoint", "light"];

/** `tag` with A1111 emphasis when its weight is not 1: `(tag:1.2)`. */
export function weighted(tag, weight) {
  const clean = tag.trim();
  if (!clean) return "";
  return Math.abs(weight - 1) < 1e-6 ? clean : `(${clean}:${Number(weight.toFixed(2))})`;
}

function builderText() {
  return CATEGORIES.flatMap((category) => {
    const weight = numberOf(`builder-${category}-weight`) || 1;
    return field(`builder-${category}`).value.split(/[,，]/).map((tag) => weighted(tag, weight));
  })
    .filter(Boolean)
    .join(", ");
}

function setupBuilder() {
  field("builder-rows").replaceChildren(
    ...CATEGORIES.map((category) =>
      h(
        "div",
        { class: "builder-row" },
        h(
          "label",
          {},
          h("span", { "data-i18n": `builder.${category}` }, t(`builder.${category}`)),
          h("input", {
            id: `builder-${category}`,
            type: "text",
            "data-i18n-placeholder": `builder.${category}Hint`,
            placeholder: t(`builder.${category}Hint`),
          }),
        ),
        h(
          "label",
          { class: "weight" },
          h("span", { "data-i18n": "builder.weight" }, t("builder.weight")),
          h("input", {
            id: `builder-${category}-weight`,
            type: "number",
            min: "0.1",
            max: "2",
            step: "0.1",
            value: "1",
            "aria-label": `${t(`builder.${category}`)} · ${t("builder.weight")}`,
          }),
        ),
      ),
    ),
  );
  field("builder-rows").addEventListener("input", () => {
    field("builder-preview").textContent = builderText();
  });
  field("builder-add").addEventListener("click", () => {
    const text = builderText();
    if (!text) return;
    const prompt = field("prompt").value.trim();
    field("prompt").value = prompt ? `${prompt}, ${text}` : text;
    for (const category of CATEGORIES) field(`builder-${category}`).value = "";
    field("builder-preview").textContent = "";
    field("prompt").focus();
  });
}

// -- requests -------------------------------------------------------------------------------

function formBody() {
  const locked = field("seed-lock").checked;
  return {
    mode: "txt2img",
    prompt: field("prompt").value.trim(),
    negative_prompt: field("negative").value.trim(),
    model: field("model").value,
    vae: field("vae").value,
    sampler: field("sampler").value || "Euler a",
    steps: numberOf("steps"),
    cfg_scale: numberOf("cfg"),
    width: numberOf("width"),
    height: numberOf("height"),
    seed: locked ? numberOf("seed") : -1,
    batch_size: numberOf("batch"),
    tiling: field("tiling").checked,
    deep_cache_interval: Number(field("speed").value),
    styles: [...selectedStyles],
  };
}

/** The settings that made `image` (its stored parameters without their mode, source and
 * options), for V, reroll and inpaint: the caller says what to make of them. */
function bodyFrom(image) {
  const { mode, image: source, mask, img2img, inpaint, hires, upscale, variation, ...settings } =
    image.params;
  const { preview, priority, timeout_seconds, stream, styles, ...kept } = settings;
  return kept;
}

function upscale(image) {
  startRun("upscale", {
    mode: "upscale",
    image: { image_id: image.id },
    upscale: { upscaler: field("upscaler").value || "Lanczos", scale: 2 },
  }, 1);
}

function vary(image, strength) {
  const batch = numberOf("batch");
  startRun("variation", {
    ...bodyFrom(image),
    mode: "variation",
    image: { image_id: image.id },
    variation: { strength },
    batch_size: batch,
  }, batch);
}

function refine(image) {
  const batch = numberOf("batch");
  startRun("img2img", {
    ...bodyFrom(image),
    mode: "img2img",
    image: { image_id: image.id },
    img2img: { denoising_strength: numberOf("strength") },
    width: image.width,
    height: image.height,
    batch_size: batch,
  }, batch);
}

function hires(image) {
  startRun("hires", {
    ...bodyFrom(image),
    mode: "txt2img",
    seed: image.seed,
    batch_size: 1,
    hires: { scale: 2, upscaler: "Latent", denoising_strength: 0.55 },
  }, 1);
}

function lockSeed(seed) {
  field("seed").value = String(seed);
  field("seed-lock").checked = true;
  announce(t("results.useSeedLabel", { seed }));
}

// -- runs -----------------------------------------------------------------------------------

/** Send `body` as a streamed generation and show it as a new run at the top. */
export function startRun(kind, body, expected) {
  $("#results-empty").hidden = true;
  const progress = h("progress", { max: 1, value: 0, "aria-label": t(`results.kind.${kind}`) });
  const state = h("span", { class: "run-state" }, t("results.queued"));
  const grid = h("ol", { class: `grid grid-${Math.min(expected, 4)}` });
  const cells = Array.from({ length: expected }, () => h("li", { class: "cell pending" }));
  grid.append(...cells);
  const reroll = h("button", {
    type: "button",
    class: "ghost reroll",
    "aria-label": t("results.rerollLabel"),
    title: t("results.rerollLabel"),
    hidden: true,
    onclick: () => startRun(kind, { ...body, seed: -1 }, expected),
  }, "↻ ", t("results.reroll"));
  const card = h(
    "li",
    { class: "run", "aria-busy": "true", dataset: { kind } },
    h(
      "header",
      {},
      h("span", { class: "run-kind" }, t(`results.kind.${kind}`)),
      h("span", { class: "run-prompt" }, body.prompt || ""),
      kind === "upscale" ? null : reroll,
    ),
    h("div", { class: "run-progress" }, progress, state),
    grid,
  );
  field("runs").prepend(card);
  consume(card, body, { progress, state, cells, grid, reroll }).catch((error) => {
    card.setAttribute("aria-busy", "false");
    card.dataset.state = "failed";
    state.textContent = t("results.failed", { message: error.message });
    announce(t("results.failed", { message: error.message }), "error");
  });
  return card;
}

async function consume(card, body, view) {
  const preview = { ...PREVIEW, method: field("preview-method").value || "Approx cheap" };
  const request = { ...body, stream: true, preview };
  for await (const { event, data } of postEvents("/v1/generations", request)) {
    if (event === "queued") {
      view.state.textContent = t("results.queued");
    } else if (event === "progress") {
      view.progress.value = data.progress;
      view.state.textContent = t("results.running", { step: data.step, total: data.total_steps });
      if (data.preview && data.preview.startsWith("data:image/jpeg;base64,")) {
        showPreview(view.cells[0], data.preview);
      }
    } else if (event === "result") {
      view.progress.value = 1;
      view.state.textContent = t("results.done");
      card.setAttribute("aria-busy", "false");
      card.dataset.state = "done";
      view.reroll.hidden = false;
      showImages(view, data.images);
      if (!field("seed-lock").checked && data.images.length) {
        field("seed").value = String(data.images[0].seed);
      }
    } else if (event === "error") {
      throw new Error((data.error && data.error.message) || "error");
    }
  }
}

function showPreview(cell, src) {
  let img = cell.querySelector("img.preview");
  if (!img) {
    img = h("img", { class: "preview", alt: "" });
    cell.append(img);
  }
  img.src = src;
}

function showImages(view, images) {
  view.grid.className = `grid grid-${Math.min(images.length, 4)}`;
  view.grid.replaceChildren(...images.map((image, i) => imageCell(image, i + 1)));
}

function imageCell(image, n) {
  const img = h("img", { alt: image.prompt || `#${n}`, width: image.width, height: image.height });
  const download = h("a", {
    class: "button ghost",
    download: `${image.id}.png`,
    "aria-label": t("results.downloadLabel", { n }),
    title: t("results.downloadLabel", { n }),
  }, "↓");
  imageUrl(image.url)
    .then((url) => {
      img.src = url;
      download.href = url;
    })
    .catch(() => {});
  const action = (label, aria, onclick, cls = "") =>
    h("button", { type: "button", class: `ghost ${cls}`, "aria-label": aria, title: aria, onclick }, label);
  return h(
    "li",
    { class: "cell", dataset: { imageId: image.id, seed: String(image.seed) } },
    h("a", { href: `#/image/${image.id}`, class: "cell-image", "aria-label": t("results.openLabel", { n }) }, img),
    h(
      "div",
      { class: "cell-actions" },
      action(t("results.upscale"), t("results.upscaleLabel", { n }), () => upscale(image), "act-u"),
      action(t("results.varySubtle"), t("results.varySubtleLabel", { n }), () => vary(image, "subtle"), "act-v"),
      action(t("results.varyStrong"), t("results.varyStrongLabel", { n }), () => vary(image, "strong"), "act-vs"),
      action(t("results.refine"), t("results.refineLabel", { n }), () => refine(image), "act-refine"),
      action(t("results.hires"), t("results.hiresLabel", { n }), () => hires(image), "act-hires"),
      action(t("results.inpaint"), t("results.inpaintLabel", { n }), () => openInpaint(image), "act-inpaint"),
      download,
    ),
    h(
      "button",
      {
        type: "button",
        class: "seed ghost",
        "aria-label": t("results.useSeedLabel", { seed: image.seed }),
        title: t("results.useSeed"),
        onclick: () => lockSeed(image.seed),
      },
      t("results.seed", { seed: image.seed }),
    ),
  );
}

/** Fill the form from a gallery image ("use these parameters"). */
export function useParameters(image) {
  const p = image.params;
  field("prompt").value = p.prompt;
  field("negative").value = p.negative_prompt;
  if ([...field("model").options].some((o) => o.value === p.model)) field("model").value = p.model;
  if ([...field("sampler").options].some((o) => o.value === p.sampler)) field("sampler").value = p.sampler;
  field("steps").value = String(p.steps);
  field("cfg").value = String(p.cfg_scale);
  field("width").value = String(p.width);
  field("height").value = String(p.height);
  syncSizeSelect();
  field("seed").value = String(p.seed);
  field("seed-lock").checked = true;
  field("advanced").open = true;
}

export function setupCreate() {
  fillSizes();
  setupBuilder();
  setupInpaint((image, mask, prompt, strength) => {
    const batch = numberOf("batch");
    startRun("inpaint", {
      ...bodyFrom(image),
      mode: "inpaint",
      prompt: prompt || image.params.prompt,
      image: { image_id: image.id },
      mask: { data: mask },
      img2img: { denoising_strength: strength },
      inpaint: { mask_blur: 4, fill: "original" },
      width: image.width,
      height: image.height,
      batch_size: batch,
    }, batch);
  });
  onLanguage(() => {
    fillSizes();
    loadModels().catch(() => {});
  });
  field("size").addEventListener("change", () => {
    const preset = SIZES.find(([ratio]) => ratio === field("size").value);
    if (preset) {
      field("width").value = String(preset[1]);
      field("height").value = String(preset[2]);
    }
  });
  for (const id of ["width", "height"]) field(id).addEventListener("input", syncSizeSelect);
  field("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      field("create-form").requestSubmit();
    }
  });
  field("create-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = formBody();
    if (!body.prompt) {
      field("prompt").focus();
      return;
    }
    startRun("txt2img", body, body.batch_size);
  });
  return loadLists();
}

export function loadLists() {
  const report = (error) => announce(t("error.generic", { message: error.message }), "error");
  return Promise.all([
    loadModels().catch(report),
    loadSamplers().catch(report),
    loadUpscalers().catch(report),
    loadStyles().catch(report),
  ]);
}
