// The Train page: upload pictures, see and edit their tags, set parameters with the step
// formula and warnings live, watch loss and samples, then turn the LoRA into a style preset.
import { api, getEvents, upload } from "./api.js";
import { announce, h } from "./dom.js";
import { t } from "./i18n.js";

const field = (id) => document.getElementById(id);
const numberOf = (id) => Number(field(id).value);
let dataset = null;
let job = null;
const losses = [];

function report(error) {
  announce(t("error.generic", { message: error.message }), "error");
}

// -- 1. pictures, 2. tags -------------------------------------------------------------------

async function uploadDataset(event) {
  event.preventDefault();
  const files = field("dataset-files").files;
  if (!files.length || !field("dataset-name").value.trim()) return;
  const form = new FormData();
  form.append("name", field("dataset-name").value.trim());
  form.append("default_repeats", field("dataset-repeats").value);
  for (const file of files) form.append("files", file, file.name);
  try {
    dataset = await upload("/v1/datasets", form);
    await showDataset();
    field("training-form").hidden = false;
    if (!field("train-output").value) {
      field("train-output").value = dataset.name.replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 60) || "lora";
    }
    await loadModels();
    estimate();
  } catch (error) {
    report(error);
  }
}

async function showDataset() {
  dataset = await api(`/v1/datasets/${dataset.id}?thumbnails=true`);
  field("dataset-view").hidden = false;
  field("tag-frequency").textContent = dataset.tag_frequency
    .slice(0, 30)
    .map((tag) => `${tag.tag} (${tag.count})`)
    .join(" · ");
  field("dataset-images").replaceChildren(...dataset.images.map(imageRow));
}

function imageRow(image) {
  const caption = h("textarea", {
    rows: 2,
    "aria-label": t("train.caption", { path: image.path }),
    dataset: { path: image.path },
  });
  caption.value = image.caption;
  caption.addEventListener("change", async () => {
    try {
      await api(`/v1/datasets/${dataset.id}/captions`, {
        method: "PUT",
        body: { path: image.path, caption: caption.value },
      });
    } catch (error) {
      report(error);
    }
  });
  const picture = image.thumbnail && image.thumbnail.startsWith("data:image/")
    ? h("img", { src: image.thumbnail, alt: image.path })
    : h("span", { class: "muted" }, image.path);
  return h(
    "li",
    {},
    picture,
    h("div", {}, h("span", { class: "muted path" }, `${image.path} · ×${image.repeats}`), caption),
  );
}

async function tagEdit(body) {
  try {
    await api(`/v1/datasets/${dataset.id}/tags`, { method: "POST", body });
    await showDataset();
  } catch (error) {
    report(error);
  }
}

async function autoTag() {
  try {
    await api(`/v1/datasets/${dataset.id}/auto-tag`, { method: "POST", body: {} });
    await showDataset();
  } catch (error) {
    report(error);
  }
}

// -- 3. parameters and the live estimate ------------------------------------------------------

async function loadModels() {
  const reply = await api("/v1/models?kind=checkpoint");
  const select = field("train-model");
  const current = select.value || reply.default_checkpoint;
  select.replaceChildren(...reply.models.map((m) => new Option(m.name, m.name)));
  select.value = current;
}

function trainingBody() {
  const body = {
    dataset_id: dataset.id,
    base_model: field("train-model").value,
    output_name: field("train-output").value.trim(),
    repeats: numberOf("train-repeats"),
    epochs: numberOf("train-epochs"),
    batch_size: numberOf("train-batch"),
    resolution: numberOf("train-resolution"),
    network_dim: numberOf("train-rank"),
    learning_rate: numberOf("train-lr"),
  };
  if (field("train-preset").value) body.preset = field("train-preset").value;
  const sample = field("train-sample").value.trim();
  if (sample) {
    body.sample_prompts = [sample];
    body.sample_every_n_steps = 1;
  }
  return body;
}

function size(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

let estimateTimer;
let estimateSeq = 0;
function estimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(async () => {
    if (!dataset || !field("train-model").value) return;
    const seq = ++estimateSeq;
    try {
      const e = await api("/v1/trainings/estimate", { method: "POST", body: trainingBody() });
      if (seq !== estimateSeq) return;
      field("estimate").textContent = t("train.estimate", {
        images: e.images,
        repeats: e.repeats,
        epochs: e.epochs,
        batch: e.batch_size,
        total: e.total_steps,
        size: size(e.estimated_file_bytes),
      });
      field("estimate").dataset.totalSteps = String(e.total_steps);
      field("estimate-warnings").replaceChildren(...e.warnings.map((w) => h("li", {}, w)));
    } catch (error) {
      if (seq === estimateSeq) field("estimate").textContent = error.message;
    }
  }, 200);
}

// -- 4. progress, samples, and the style preset ----------------------------------------------

async function start(event) {
  event.preventDefault();
  try {
    job = await api("/v1/trainings", { method: "POST", body: trainingBody() });
  } catch (error) {
    report(error);
    return;
  }
  losses.length = 0;
  field("training-samples").replaceChildren();
  field("style-form").hidden = true;
  field("training-view").hidden = false;
  field("train-start").disabled = true;
  showJob(job);
  watch(job.id).finally(() => {
    field("train-start").disabled = false;
  });
}

function showJob(state) {
  job = state;
  field("training-view").dataset.state = state.state;
  field("training-state").textContent = t(`train.state.${state.state}`);
  if (state.error) announce(state.error, "error");
  if (state.state === "succeeded") {
    field("training-progress").value = 1;
    field("style-form").hidden = false;
    if (!field("style-name").value) field("style-name").value = state.lora_name;
  }
}

async function watch(id) {
  try {
    for await (const { event, data } of getEvents(`/v1/trainings/${id}/events`)) {
      if (event === "job") showJob(data);
      else if (event === "progress") showProgress(data);
      else if (event === "sample" && data.image.startsWith("data:image/png;base64,")) {
        field("training-samples").append(
          h("li", {}, h("img", { src: data.image, alt: data.prompt }), h("span", { class: "muted" }, `#${data.step}`)),
        );
      } else if (event === "error") announce(data.error.message, "error");
    }
  } catch (error) {
    report(error);
  }
}

function showProgress(p) {
  field("training-progress").value = p.total_steps ? p.step / p.total_steps : 0;
  field("training-step").textContent = t("train.step", { step: p.step, total: p.total_steps });
  field("training-loss").textContent = t("train.loss", { loss: p.loss.toFixed(4) });
  losses.push([p.step, p.loss]);
  drawLoss();
}

function drawLoss() {
  const canvas = field("loss-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (losses.length < 2) return;
  const values = losses.map(([, loss]) => loss);
  const lo = Math.min(...values);
  const hi = Math.max(...values) || 1;
  const last = losses[losses.length - 1][0] || 1;
  ctx.strokeStyle = "#3d5afe";
  ctx.lineWidth = 2;
  ctx.beginPath();
  losses.forEach(([step, loss], i) => {
    const x = (step / last) * (canvas.width - 10) + 5;
    const y = canvas.height - 5 - ((loss - lo) / (hi - lo || 1)) * (canvas.height - 10);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

/** The style's preview as base64: the chosen file, else the last training sample. */
async function previewBase64() {
  const file = field("style-preview").files[0];
  if (file) {
    const url = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    return String(url).split(",")[1];
  }
  const samples = field("training-samples").querySelectorAll("img");
  return samples.length ? samples[samples.length - 1].src.split(",")[1] : undefined;
}

async function saveStyle(event) {
  event.preventDefault();
  const name = field("style-name").value.trim();
  const trigger = field("trigger-word").value.trim();
  const preview = await previewBase64().catch(() => undefined);
  try {
    await api(`/v1/styles/${encodeURIComponent(name)}`, {
      method: "PUT",
      body: {
        title: name,
        category: field("style-category").value.trim(),
        lora: job.lora_name,
        weight: numberOf("style-weight"),
        trigger_words: trigger ? [trigger] : [],
        preview,
      },
    });
    announce(t("train.styleSaved", { name }));
    window.dispatchEvent(new Event("sdstack:styles"));
  } catch (error) {
    report(error);
  }
}

export function setupTrain() {
  field("dataset-form").addEventListener("submit", uploadDataset);
  field("apply-trigger").addEventListener("click", () => {
    const word = field("trigger-word").value.trim();
    if (word) tagEdit({ trigger_word: word });
  });
  field("auto-tag").addEventListener("click", autoTag);
  field("training-form").addEventListener("input", estimate);
  field("training-form").addEventListener("change", estimate);
  field("training-form").addEventListener("submit", start);
  field("style-form").addEventListener("submit", saveStyle);
}
