// The single page: pages by URL hash (#/create, #/gallery, #/image/<id>), the language
// switch and the API key.
import { apiKey, setApiKey, unauthorized } from "./api.js";
import { startRun, setupCreate, loadLists, useParameters } from "./create.js";
import { announce } from "./dom.js";
import { setupTrain } from "./train.js";
import { loadFilters, openDetail, reloadGallery, setupGallery } from "./gallery.js";
import { LANGUAGES, language, onLanguage, setLanguage, t, translate } from "./i18n.js";

const field = (id) => document.getElementById(id);
const PAGES = ["create", "gallery", "train"];
let page = "";
let galleryLoaded = false;

function showPage(name) {
  for (const p of PAGES) {
    field(`page-${p}`).hidden = p !== name;
    const link = field(`nav-${p}`);
    if (p === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.page = name;
  if (name === "gallery" && (!galleryLoaded || page !== "gallery")) {
    galleryLoaded = true;
    loadFilters().catch(() => {});
    reloadGallery();
  }
  page = name;
}

function route() {
  const [, name, id] = location.hash.split("/");
  if (name === "image" && /^[0-9a-f]{32}$/.test(id || "")) {
    if (!page) showPage("gallery");
    openDetail(id).catch((error) => announce(t("error.generic", { message: error.message }), "error"));
    return;
  }
  if (field("detail").open) field("detail").close();
  showPage(PAGES.includes(name) ? name : "create");
}

function setupLanguage() {
  const select = field("language");
  select.replaceChildren(
    ...Object.entries(LANGUAGES).map(([code, label]) => new Option(label, code)),
  );
  select.value = language();
  select.addEventListener("change", () => setLanguage(select.value));
  setLanguage(language());
}

function setupKey() {
  const dialog = field("key-dialog");
  const open = () => {
    field("key-input").value = apiKey();
    if (!dialog.open) dialog.showModal();
  };
  field("key-button").addEventListener("click", open);
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "save") return;
    setApiKey(field("key-input").value.trim());
    loadLists();
    if (page === "gallery") reloadGallery();
  });
  unauthorized.addEventListener("unauthorized", () => {
    announce(t("key.needed"), "error");
    open();
  });
}

function setupDetailClose() {
  field("detail").addEventListener("close", () => {
    if (location.hash.startsWith("#/image/")) {
      history.replaceState(null, "", `#/${page || "gallery"}`);
    }
    if (page === "gallery") reloadGallery(); // favourite, tags or boards may have changed
  });
}

setupLanguage();
setupKey();
setupTrain();
window.addEventListener("sdstack:styles", () => loadLists());
setupDetailClose();
setupGallery({
  use: (image) => {
    useParameters(image);
    location.hash = "#/create";
    field("prompt").focus();
  },
});
onLanguage(() => translate());
window.addEventListener("hashchange", route);
route();
setupCreate().then(() => {
  document.body.dataset.ready = "true";
});
export { startRun };
