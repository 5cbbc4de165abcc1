// The Gallery page: thumbnails with infinite scroll, search and favourites; the image
// detail dialog with every parameter, lineage, favourite, delete and "use these parameters".
import { api, imageUrl } from "./api.js";
import { announce, h } from "./dom.js";
import { t } from "./i18n.js";

const PAGE_SIZE = 40;
const field = (id) => document.getElementById(id);
const state = { cursor: null, loading: false, done: false, generation: 0 };
let onUse = () => {};

// -- the grid -------------------------------------------------------------------------------

function query() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const q = field("gallery-search").value.trim();
  if (q) params.set("q", q);
  if (field("gallery-favourites").checked) params.set("favourite", "true");
  for (const name of ["model", "lora", "tag"]) {
    const value = field(`gallery-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  if (field("gallery-board").value) params.set("board_id", field("gallery-board").value);
  if (state.cursor) params.set("cursor", state.cursor);
  return `/v1/images?${params}`;
}

/** Start the grid again from the newest image (after a search or filter change). */
export function reloadGallery() {
  state.generation += 1;
  state.cursor = null;
  state.done = false;
  state.loading = false;
  field("gallery-grid").replaceChildren();
  return loadMore();
}

async function loadMore() {
  if (state.loading || state.done) return;
  state.loading = true;
  const generation = state.generation;
  field("gallery-state").textContent = t("gallery.loading");
  try {
    const page = await api(query());
    if (generation !== state.generation) return;
    field("gallery-grid").append(...page.images.map(tile));
    state.cursor = page.next_cursor;
    state.done = !page.next_cursor;
    const empty = !field("gallery-grid").children.length;
    field("gallery-state").textContent = empty ? t("gallery.empty") : state.done ? t("gallery.end") : "";
  } catch (error) {
    field("gallery-state").textContent = t("error.generic", { message: error.message });
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  if (!state.done && sentinelVisible()) loadMore();
}

function sentinelVisible() {
  const box = field("gallery-sentinel").getBoundingClientRect();
  return !field("page-gallery").hidden && box.top < window.innerHeight + 400;
}

function favouriteButton(image, onChange) {
  const button = h("button", { type: "button", class: "ghost fav" });
  const paint = () => {
    button.setAttribute("aria-pressed", String(image.favourite));
    button.setAttribute("aria-label", t(image.favourite ? "gallery.unfavourite" : "gallery.favourite"));
    button.title = button.getAttribute("aria-label");
    button.textContent = image.favourite ? "★" : "☆";
  };
  paint();
  button.addEventListener("click", async () => {
    try {
      const updated = await api(`/v1/images/${image.id}`, {
        method: "PATCH",
        body: { favourite: !image.favourite },
      });
      image.favourite = updated.favourite;
      paint();
      if (onChange) onChange(image);
    } catch (error) {
      announce(t("error.generic", { message: error.message }), "error");
    }
  });
  return button;
}

async function deleteImage(image) {
  if (!window.confirm(t("gallery.confirmDelete"))) return false;
  try {
    await api(`/v1/images/${image.id}`, { method: "DELETE" });
  } catch (error) {
    announce(t("error.generic", { message: error.message }), "error");
    return false;
  }
  for (const el of document.querySelectorAll(`[data-image-id="${image.id}"]`)) {
    if (el.closest("#gallery-grid")) el.remove();
  }
  announce(t("gallery.deleted"));
  return true;
}

function thumbnail(image) {
  const img = h("img", { alt: image.prompt || image.id, loading: "lazy" });
  imageUrl(image.thumbnail_url)
    .then((url) => {
      img.src = url;
    })
    .catch(() => {});
  return img;
}

function tile(image) {
  return h(
    "li",
    { class: "tile", dataset: { imageId: image.id } },
    h("a", { href: `#/image/${image.id}`, class: "tile-image", title: image.prompt }, thumbnail(image)),
    h(
      "div",
      { class: "tile-actions" },
      favouriteButton(image),
      h("button", {
        type: "button",
        class: "ghost del",
        "aria-label": t("gallery.delete"),
        title: t("gallery.delete"),
        onclick: () => deleteImage(image),
      }, "✕"),
    ),
  );
}

// -- filter lists and boards ---------------------------------------------------------------

let boards = [];

function choices(select, values) {
  const current = select.value;
  select.replaceChildren(
    new Option(t("gallery.any"), ""),
    ...values.map(([value, label]) => new Option(label, value)),
  );
  select.value = values.some(([value]) => value === current) ? current : "";
}

/** Fill the model, LoRA and board filters. */
export async function loadFilters() {
  const [models, loras, boardList] = await Promise.all([
    api("/v1/models?kind=checkpoint"),
    api("/v1/loras"),
    api("/v1/boards"),
  ]);
  boards = boardList.boards;
  choices(field("gallery-model"), models.models.map((m) => [m.name, m.name]));
  choices(field("gallery-lora"), loras.map((m) => [m.name, m.name]));
  choices(field("gallery-board"), boards.map((b) => [b.id, `${b.name} (${b.image_count})`]));
}

async function newBoard() {
  const name = (window.prompt(t("gallery.boardName")) || "").trim();
  if (!name) return;
  try {
    const board = await api("/v1/boards", { method: "POST", body: { name } });
    await loadFilters();
    field("gallery-board").value = board.id;
    reloadGallery();
  } catch (error) {
    announce(t("error.generic", { message: error.message }), "error");
  }
}

async function patchImage(image, body) {
  try {
    Object.assign(image, await api(`/v1/images/${image.id}`, { method: "PATCH", body }));
    announce(t("detail.saved"));
  } catch (error) {
    announce(t("error.generic", { message: error.message }), "error");
  }
}

function boardChecks(image) {
  return boards.map((board) =>
    h(
      "label",
      { class: "check" },
      h("input", {
        type: "checkbox",
        checked: image.board_ids.includes(board.id),
        dataset: { boardId: board.id },
        onchange: (event) => {
          const ids = new Set(image.board_ids);
          if (event.target.checked) ids.add(board.id);
          else ids.delete(board.id);
          patchImage(image, { board_ids: [...ids] }).then(() => loadFilters());
        },
      }),
      h("span", {}, board.name),
    ),
  );
}

// -- the detail dialog ----------------------------------------------------------------------

function paramRows(image) {
  const loras = image.loras.map((l) => `${l.name}:${l.weight}`).join(", ");
  const rows = [
    ["param.prompt", image.prompt],
    ["param.negative_prompt", image.negative_prompt],
    ["param.model", image.model],
    ["param.vae", image.vae],
    ["param.loras", loras],
    ["param.sampler", image.sampler],
    ["param.steps", image.steps],
    ["param.cfg_scale", image.cfg_scale],
    ["param.size", `${image.width}×${image.height}`],
    ["param.seed", image.seed],
    ["param.tags", image.tags.join(", ")],
    ["param.created_at", new Date(image.created_at).toLocaleString()],
  ];
  return rows
    .filter(([, value]) => value !== "" && value !== null && value !== undefined)
    .flatMap(([key, value]) => [
      h("dt", { dataset: { param: key.slice(6) } }, t(key)),
      h("dd", { dataset: { param: key.slice(6) } }, String(value)),
    ]);
}

function lineageList(images) {
  if (!images.length) return [h("li", { class: "muted" }, t("detail.none"))];
  return images.map((image) =>
    h(
      "li",
      { dataset: { imageId: image.id } },
      h("a", { href: `#/image/${image.id}`, title: image.prompt, "aria-label": image.prompt || image.id }, thumbnail(image)),
    ),
  );
}

/** Show image `id` in the detail dialog. */
export async function openDetail(id) {
  const dialog = field("detail");
  const [image, lineage] = await Promise.all([
    api(`/v1/images/${id}`),
    api(`/v1/images/${id}/lineage`),
    loadFilters(),
  ]);
  dialog.dataset.imageId = image.id;
  const img = field("detail-img");
  img.removeAttribute("src");
  img.alt = image.prompt || image.id;
  const download = h("a", { class: "button ghost", download: `${image.id}.png` }, t("detail.download"));
  imageUrl(image.url).then((url) => {
    img.src = url;
    download.href = url;
  });
  field("detail-params").replaceChildren(...paramRows(image));
  field("detail-tags").value = image.tags.join(", ");
  field("detail-tags").onchange = () => {
    const tags = field("detail-tags").value.split(/[,，]/).map((x) => x.trim()).filter(Boolean);
    patchImage(image, { tags });
  };
  field("detail-boards").replaceChildren(...boardChecks(image));
  field("detail-ancestors").replaceChildren(...lineageList(lineage.ancestors));
  field("detail-descendants").replaceChildren(...lineageList(lineage.descendants));
  field("detail-actions").replaceChildren(
    favouriteButton(image, (changed) => {
      for (const tileEl of document.querySelectorAll(`#gallery-grid [data-image-id="${changed.id}"]`)) {
        tileEl.replaceWith(tile(changed));
      }
    }),
    h("button", {
      type: "button",
      class: "primary use",
      onclick: () => {
        dialog.close();
        onUse(image);
      },
    }, t("detail.useParams")),
    download,
    h("button", {
      type: "button",
      class: "ghost danger del",
      onclick: async () => {
        if (await deleteImage(image)) dialog.close();
      },
    }, t("gallery.delete")),
  );
  if (!dialog.open) dialog.showModal();
}

export function setupGallery({ use }) {
  onUse = use;
  let timer;
  field("gallery-search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(reloadGallery, 250);
  });
  field("gallery-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    reloadGallery();
  });
  for (const id of ["gallery-favourites", "gallery-model", "gallery-lora", "gallery-board"]) {
    field(id).addEventListener("change", reloadGallery);
  }
  field("gallery-tag").addEventListener("change", reloadGallery);
  field("gallery-new-board").addEventListener("click", newBoard);
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { rootMargin: "400px" }).observe(field("gallery-sentinel"));
  field("detail-close").addEventListener("click", () => field("detail").close());
}
