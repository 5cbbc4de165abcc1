"""The web UI in a real headless Chromium against the real stack (tiny demo model, 64×64)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# Records every progress label a run card shows, to prove progress was live.
WATCH_PROGRESS = """() => {
  window.__states = [];
  window.__previews = 0;
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (el && el.classList.contains("run-state")) window.__states.push(el.textContent);
      if (el && el.matches && el.matches("img.preview")) window.__previews += 1;
      for (const added of r.addedNodes) {
        if (added.nodeType === 1 && added.matches("img.preview")) window.__previews += 1;
      }
    }
  }).observe(document.getElementById("runs"), {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ["src"],
  });
}"""


def open_ui(page, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("body[data-ready=true]")


def small_images(page, steps: int = 6, batch: int = 4) -> None:
    page.get_by_text("Advanced").click()
    page.get_by_label("Width").fill("64")
    page.get_by_label("Height").fill("64")
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Images").fill(str(batch))


def newest_run(page):
    return page.locator("#runs > li.run").first


def wait_done(run, count: int) -> list[str]:
    run.locator(".cell[data-image-id]").nth(count - 1).wait_for()
    assert run.get_attribute("data-state") == "done"
    ids = run.locator(".cell[data-image-id]").evaluate_all(
        "cells => cells.map(c => c.dataset.imageId)"
    )
    assert len(ids) == count
    run.page.wait_for_function(
        "run => [...run.querySelectorAll('.cell-image img')].every(i => i.naturalWidth > 0)",
        arg=run.element_handle(),
    )
    return ids


def test_a_prompt_makes_four_images_with_progress_then_upscale_vary_reroll(
    page, running_stack: RunningStack
) -> None:
    open_ui(page)
    small_images(page)
    page.evaluate(WATCH_PROGRESS)
    prompt = f"a brass lighthouse at dusk {uuid.uuid4().hex[:6]}"
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Prompt", exact=True).press("Enter")  # Enter submits, as in a chat box

    first = newest_run(page)
    ids = wait_done(first, 4)
    first = page.locator("#runs > li.run", has=page.locator(f'[data-image-id="{ids[0]}"]'))
    states = page.evaluate("window.__states")
    assert any(re.fullmatch(r"Step \d+ of 6", s) for s in states), states
    assert page.evaluate("window.__previews") > 0
    assert first.locator(".run-prompt").text_content() == prompt
    seeds = first.locator(".cell").evaluate_all("cells => cells.map(c => Number(c.dataset.seed))")
    assert seeds == list(range(seeds[0], seeds[0] + 4))  # image i uses seed + i
    expect(page.get_by_role("button", name=f"Lock seed {seeds[0]}")).to_be_visible()
    screenshot(page, "create")

    with running_stack.http() as http:
        # U: upscale image 1 (Lanczos ×2), a child of it in the gallery
        first.get_by_role("button", name="Upscale image 1").click()
        upscaled = page.locator("#runs > li.run[data-kind=upscale]").first
        (up_id,) = wait_done(upscaled, 1)
        record = http.get(f"/v1/images/{up_id}").json()
        assert (record["width"], record["height"], record["parent_image_id"]) == (128, 128, ids[0])

        # V: vary image 2 (subtle), four new images made from it
        first.get_by_role("button", name="Vary image 2 (subtle)").click()
        varied = page.locator("#runs > li.run[data-kind=variation]").first
        var_ids = wait_done(varied, 4)
        assert not set(var_ids) & set(ids)
        for image_id in var_ids:
            assert http.get(f"/v1/images/{image_id}").json()["parent_image_id"] == ids[1]

    # R: reroll the first prompt with new seeds
    first.get_by_role("button", name="Reroll with new seeds").click()
    rerolled = newest_run(page)
    wait_done(rerolled, 4)
    new_seeds = rerolled.locator(".cell").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.seed))"
    )
    assert new_seeds != seeds
    assert page.locator("#runs > li.run").count() == 4

    # lock a seed from a result: the form takes it
    first.get_by_role("button", name=f"Lock seed {seeds[2]}").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value(str(seeds[2]))
    expect(page.get_by_label("Lock seed", exact=True)).to_be_checked()
    screenshot(page, "results")


def test_tiling_speed_and_previews_are_asked_from_the_form(
    page, running_stack: RunningStack
) -> None:
    open_ui(page)
    small_images(page, steps=3, batch=1)
    page.get_by_label("Seamless tiling").check()
    page.get_by_label("Speed").select_option(label="Fastest (DeepCache 3)")
    page.get_by_label("Live previews").select_option(label="Exact (slower)")
    page.get_by_label("Prompt", exact=True).fill("a tileable brick wall")
    with page.expect_request(
        lambda r: r.url.endswith("/v1/generations") and r.method == "POST"
    ) as sent:
        page.get_by_role("button", name="Generate").click()
    assert json.loads(sent.value.post_data)["preview"]["method"] == "Full"
    (image_id,) = wait_done(newest_run(page), 1)
    with running_stack.http() as http:
        params = http.get(f"/v1/images/{image_id}").json()["params"]
    assert params["tiling"] is True and params["deep_cache_interval"] == 3


def _generate(http: httpx.Client, prompt: str) -> str:
    body = {"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": 7}
    response = http.post("/v1/generations", json=body)
    assert response.status_code == 200, response.text
    return response.json()["images"][0]["id"]


def test_the_gallery_finds_shows_lineage_favourites_and_deletes(
    page, running_stack: RunningStack
) -> None:
    word = f"zephyr{uuid.uuid4().hex[:8]}"
    with running_stack.http() as http:
        parent = _generate(http, f"a quiet {word} courtyard")
        upscale = {"mode": "upscale", "image": {"image_id": parent}, "upscale": {"scale": 2}}
        child = http.post("/v1/generations", json=upscale).json()["images"][0]["id"]

        open_ui(page, "/#/gallery")
        page.locator("#gallery-grid .tile").first.wait_for()
        screenshot(page, "gallery")
        page.get_by_label("Search prompts").fill(word)
        tile = page.locator(f'#gallery-grid .tile[data-image-id="{parent}"]')
        tile.wait_for()
        page.wait_for_function(
            "() => document.querySelectorAll('#gallery-grid .tile').length === 1"
        )

        # detail: every parameter, and the lineage both ways
        tile.locator("a.tile-image").click()
        dialog = page.locator("#detail")
        dialog.wait_for(state="visible")
        page.wait_for_function(
            f"() => document.getElementById('detail').dataset.imageId === '{parent}'"
        )
        assert (
            dialog.locator('dd[data-param="prompt"]').text_content() == f"a quiet {word} courtyard"
        )
        assert dialog.locator('dd[data-param="seed"]').text_content() == "7"
        assert dialog.locator('dd[data-param="steps"]').text_content() == "2"
        assert dialog.locator('dd[data-param="size"]').text_content() == "64×64"
        descendant = dialog.locator(f'#detail-descendants [data-image-id="{child}"] a')
        descendant.wait_for()
        assert page.url.endswith(f"#/image/{parent}")
        screenshot(page, "detail")
        descendant.click()
        page.wait_for_function(
            f"() => document.getElementById('detail').dataset.imageId === '{child}'"
        )
        dialog.locator(f'#detail-ancestors [data-image-id="{parent}"]').wait_for()
        assert dialog.locator('dd[data-param="size"]').text_content() == "128×128"
        screenshot(page, "lineage")

        # favourite from the detail, then filter by favourites
        dialog.get_by_role("button", name="Favourite").click()
        dialog.get_by_role("button", name="Remove from favourites").wait_for()
        assert http.get(f"/v1/images/{child}").json()["favourite"] is True
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")
        page.get_by_label("Search prompts").fill("")
        page.get_by_label("Favourites only").check()
        page.locator(f'#gallery-grid .tile[data-image-id="{child}"]').wait_for()
        assert page.locator(f'#gallery-grid .tile[data-image-id="{parent}"]').count() == 0

        # a deep link opens the detail; "use these parameters" fills the create form
        open_ui(page, f"/#/image/{parent}")
        dialog.get_by_role("button", name="Use these parameters").click()
        page.wait_for_function("() => location.hash === '#/create'")
        assert page.get_by_label("Prompt", exact=True).input_value() == f"a quiet {word} courtyard"
        assert page.get_by_label("Seed", exact=True).input_value() == "7"
        assert page.get_by_label("Width").input_value() == "64"

        # delete from the grid (after confirming)
        page.goto("/#/gallery")
        page.get_by_label("Favourites only").uncheck()
        page.get_by_label("Search prompts").fill(word)
        tile.wait_for()
        page.once("dialog", lambda d: d.accept())
        tile.get_by_role("button", name="Delete").click()
        tile.wait_for(state="detached")
        assert http.get(f"/v1/images/{parent}").status_code == 404
        assert http.get(f"/v1/images/{child}").status_code == 200  # children stay


def test_labels_switch_between_english_and_chinese(page) -> None:
    open_ui(page)
    expect(page.get_by_role("link", name="Create")).to_be_visible()
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("link", name="创作")).to_be_visible()
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("link", name="图库")).to_be_visible()  # the choice is kept
    page.get_by_role("link", name="图库").click()
    expect(page.get_by_label("只看收藏")).to_be_visible()
    screenshot(page, "gallery-zh")
    page.get_by_label("语言").select_option("en")
    expect(page.get_by_role("link", name="Gallery")).to_be_visible()


def test_a_tablet_width_needs_no_sideways_scrolling_and_keys_work(page) -> None:
    page.set_viewport_size({"width": 768, "height": 1024})
    for path, name in [("/#/create", "create-tablet"), ("/#/gallery", "gallery-tablet")]:
        open_ui(page, path)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, name)
    open_ui(page, "/#/create")
    page.keyboard.press("Tab")  # the skip link comes first, then the navigation
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.get_by_text("Advanced").focus()
    page.keyboard.press("Enter")  # a native <details>: the keyboard opens it
    expect(page.get_by_label("Negative prompt")).to_be_visible()


def test_the_page_is_public_and_its_files_are_local(page, running_stack: RunningStack) -> None:
    outside: list[str] = []
    base = running_stack.base_url
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None,
    )
    open_ui(page)
    assert outside == []
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.get("/").headers["content-type"].startswith("text/html")
        assert anonymous.get("/ui/app.js").headers["content-type"].startswith("text/javascript")


def test_inpaint_repaints_only_the_painted_region_and_refine_makes_children(
    page, running_stack: RunningStack
) -> None:
    open_ui(page)
    small_images(page, steps=4, batch=1)
    page.get_by_label("Prompt", exact=True).fill("a stone arch over a river")
    page.get_by_role("button", name="Generate").click()
    (source,) = wait_done(newest_run(page), 1)
    source_run = page.locator("#runs > li.run", has=page.locator(f'[data-image-id="{source}"]'))

    source_run.get_by_role("button", name="Inpaint a region of image 1").click()
    canvas = page.locator("#inpaint-canvas")
    canvas.wait_for()
    page.get_by_label("Brush size").fill("8")
    box = canvas.bounding_box()
    assert box is not None
    # paint a stroke down the left quarter of the picture (x ≈ 8 of 64)
    x = box["x"] + box["width"] * 8 / 64
    page.mouse.move(x, box["y"] + box["height"] * 0.1)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] * 0.9, steps=8)
    page.mouse.up()
    screenshot(page, "inpaint")
    page.get_by_label("Prompt for the region").fill("a red door")
    page.get_by_role("button", name="Inpaint", exact=True).click()
    inpainted = page.locator("#runs > li.run[data-kind=inpaint]").first
    (result,) = wait_done(inpainted, 1)

    with running_stack.http() as http:
        before = _pixels(http, source)
        after = _pixels(http, result)
        record = http.get(f"/v1/images/{result}").json()
    assert record["parent_image_id"] == source and record["prompt"] == "a red door"
    # the mask reaches x ≈ 12, blurred by 4: from x = 24 on, every pixel is kept exactly
    assert before[:, 24:].tolist() == after[:, 24:].tolist()
    assert before[:, :12].tolist() != after[:, :12].tolist()

    source_run.get_by_role("button", name="Refine image 1 (image to image)").click()
    (refined,) = wait_done(page.locator("#runs > li.run[data-kind=img2img]").first, 1)
    source_run.get_by_role("button", name="Hi-res fix of image 1").click()
    (big,) = wait_done(page.locator("#runs > li.run[data-kind=hires]").first, 1)
    with running_stack.http() as http:
        assert http.get(f"/v1/images/{refined}").json()["parent_image_id"] == source
        hires = http.get(f"/v1/images/{big}").json()
    assert (hires["width"], hires["height"]) == (128, 128)


def _pixels(http: httpx.Client, image_id: str):
    import io

    import numpy as np
    from PIL import Image

    response = http.get(f"/v1/images/{image_id}/file")
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


@pytest.fixture(scope="module")
def style_with_lora(running_stack: RunningStack, tiny_model_files, tmp_path_factory) -> str:
    import base64
    import io

    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from services.generator.loras import make_kohya_lora

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files.diffusers_dir, local_files_only=True
    )
    lora = make_kohya_lora(pipe, tmp_path_factory.mktemp("ui-lora") / "ui.safetensors", seed=3)
    preview = io.BytesIO()
    Image.new("RGB", (48, 36), (90, 120, 160)).save(preview, "PNG")
    with running_stack.http() as http:
        uploaded = http.post(
            "/v1/models",
            params={"name": "ui-arch", "kind": "lora", "format": "safetensors", "overwrite": True},
            content=lora.read_bytes(),
            headers={"content-type": "application/octet-stream"},
        )
        assert uploaded.status_code == 201, uploaded.text
        style = {
            "title": "Architecture",
            "category": "architecture",
            "lora": "ui-arch",
            "weight": 0.8,
            "trigger_words": ["archviz"],
            "prompt_template": "{prompt}, architectural photograph",
            "preview": base64.b64encode(preview.getvalue()).decode(),
        }
        put = http.put("/v1/styles/ui-architecture", json=style)
        assert put.status_code == 200, put.text
    return "ui-architecture"


def test_a_style_preset_brings_its_lora(page, running_stack: RunningStack, style_with_lora):
    open_ui(page)
    card = page.locator(f'.style-card[data-style="{style_with_lora}"]')
    card.locator("img").wait_for()  # its preview picture
    assert card.get_attribute("aria-pressed") == "false"
    card.click()
    assert card.get_attribute("aria-pressed") == "true"
    small_images(page, steps=2, batch=1)
    page.get_by_label("Prompt", exact=True).fill("a glass house")
    screenshot(page, "styles")
    page.get_by_role("button", name="Generate").click()
    (image_id,) = wait_done(newest_run(page), 1)
    with running_stack.http() as http:
        record = http.get(f"/v1/images/{image_id}").json()
    assert [lora["name"] for lora in record["loras"]] == ["ui-arch"]
    assert record["prompt"] == "a glass house, architectural photograph, archviz"


@pytest.fixture(scope="module")
def keyed_gateway(running_stack: RunningStack, tmp_path_factory) -> Iterator[ExtraProcess]:
    gateway = start_gateway(
        running_stack, tmp_path_factory.mktemp("ui-keyed"), api_keys="ui-secret-key:ada"
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def test_with_api_keys_the_page_loads_and_asks_for_the_key(browser, keyed_gateway) -> None:
    context = browser.new_context(base_url=keyed_gateway.base_url, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto("/")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")  # the API answered 401: the page asks for the key
        screenshot(page, "api-key")
        page.get_by_role("textbox", name="API key").fill("ui-secret-key")
        page.get_by_role("button", name="Save").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#sampler option')].some(o => o.value)"
        )
        assert page.evaluate("localStorage.getItem('sdstack.apiKey')") == "ui-secret-key"
        small_images(page, steps=2, batch=1)
        page.get_by_label("Prompt", exact=True).fill("a keyed garden")
        page.get_by_role("button", name="Generate").click()
        (image_id,) = wait_done(newest_run(page), 1)  # images load with the key, as blobs
        with keyed_gateway.http(authorization="Bearer ui-secret-key") as http:
            assert http.get(f"/v1/images/{image_id}").json()["prompt"] == "a keyed garden"
    finally:
        context.close()


def test_the_prompt_builder_adds_weighted_tags_by_category(page) -> None:
    open_ui(page)
    page.get_by_text("Prompt builder").click()
    page.get_by_label("Subject", exact=True).fill("a timber house")
    page.get_by_label("Light and quality", exact=True).fill("golden hour, absurdres")
    page.get_by_label("Light and quality · Weight").fill("1.2")
    page.get_by_label("Viewpoint", exact=True).fill("aerial view")
    expected = "a timber house, aerial view, (golden hour:1.2), (absurdres:1.2)"
    expect(page.locator("#builder-preview")).to_have_text(expected)
    page.get_by_label("Prompt", exact=True).fill("on a hill")
    page.get_by_role("button", name="Add to prompt").click()
    assert page.get_by_label("Prompt", exact=True).input_value() == f"on a hill, {expected}"
    assert page.get_by_label("Subject", exact=True).input_value() == ""
    screenshot(page, "prompt-builder")


def test_boards_tags_and_filters_in_the_gallery(page, running_stack: RunningStack) -> None:
    word = f"quill{uuid.uuid4().hex[:8]}"
    board_name = f"Board {word}"
    with running_stack.http() as http:
        first = _generate(http, f"{word} one")
        second = _generate(http, f"{word} two")
        open_ui(page, "/#/gallery")
        page.once("dialog", lambda d: d.accept(board_name))
        page.get_by_role("button", name="New board").click()
        page.wait_for_function(
            "name => document.getElementById('gallery-board').selectedOptions[0]"
            ".textContent.startsWith(name)",
            arg=board_name,
        )
        page.get_by_text("No images yet.").wait_for()  # the new board is empty

        open_ui(page, f"/#/image/{first}")
        dialog = page.locator("#detail")
        dialog.get_by_label(board_name).check()
        dialog.get_by_label("Tags (comma separated)").fill("facade, dusk")
        dialog.get_by_label("Tags (comma separated)").press("Enter")
        page.wait_for_function(
            f"""async () => {{
                const r = await fetch('/v1/images/{first}');
                const image = await r.json();
                return image.tags.length === 2 && image.board_ids.length === 1;
            }}"""
        )
        record = http.get(f"/v1/images/{first}").json()
        assert sorted(record["tags"]) == ["dusk", "facade"]
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")
        page.get_by_label("Board", exact=True).select_option(label=f"{board_name} (1)")
        page.locator(f'#gallery-grid [data-image-id="{first}"]').wait_for()
        assert page.locator("#gallery-grid .tile").count() == 1
        page.get_by_label("Board", exact=True).select_option("")
        page.get_by_label("Search prompts").fill(word)
        page.locator(f'#gallery-grid [data-image-id="{second}"]').wait_for()
        page.get_by_label("Tag", exact=True).fill("dusk")
        page.get_by_label("Tag", exact=True).press("Enter")
        page.wait_for_function(
            "id => [...document.querySelectorAll('#gallery-grid .tile')]"
            ".map(tile => tile.dataset.imageId).join() === id",
            arg=first,
        )
        screenshot(page, "gallery-filters")


def test_train_a_lora_from_uploaded_pictures_and_make_it_a_style(
    page, running_stack: RunningStack, tmp_path
) -> None:
    from PIL import Image

    files = []
    for i, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        picture = tmp_path / f"tile{i}.png"
        Image.new("RGB", (64, 64), colour).save(picture)
        caption = tmp_path / f"tile{i}.txt"
        caption.write_text("stripes, red" if i == 0 else "stripes, blue")
        files += [str(picture), str(caption)]
    name = f"ui-train-{uuid.uuid4().hex[:6]}"

    open_ui(page, "/#/train")
    page.get_by_label("Dataset name").fill(name)
    page.get_by_label("Pictures and captions (.png, .jpg, .txt, .zip)").set_input_files(files)
    page.locator("#dataset-repeats").fill("1")
    page.get_by_role("button", name="Upload").click()
    caption = page.get_by_label("Caption of tile0.png")
    caption.wait_for()
    assert caption.input_value() == "stripes, red"
    page.get_by_label("Trigger word").fill("sksuitest")
    page.get_by_role("button", name="Add to every caption").click()
    page.wait_for_function(
        "() => document.querySelector('[data-path=\"tile1.png\"]')?.value.startsWith('sksuitest')"
    )

    page.get_by_label("LoRA name").fill(name)
    page.locator("#train-epochs").fill("2")
    page.get_by_label("Resolution").fill("64")
    page.get_by_label("Network rank").fill("4")
    page.get_by_label("Sample prompt").fill("sksuitest, stripes")
    page.wait_for_function(
        "() => document.getElementById('estimate').textContent.startsWith("
        "'2 images × 1 repeats × 2 epochs ÷ 1 = 4 steps')"
    )
    assert page.locator("#estimate-warnings li").count() >= 1  # far below 1500 steps
    screenshot(page, "train")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector("#training-view[data-state=succeeded]", timeout=80_000)
    assert page.locator("#training-samples img").count() >= 1
    expect(page.locator("#training-step")).to_have_text("step 4 of 4")
    page.get_by_label("Style name").fill(f"{name}-style")
    page.get_by_role("button", name="Save style").click()
    page.get_by_text(f"Style {name}-style saved").wait_for()
    screenshot(page, "train-done")
    with running_stack.http() as http:
        style = http.get(f"/v1/styles/{name}-style").json()
        assert style["lora"] == name and style["trigger_words"] == ["sksuitest"]
        assert style["preview_url"] is not None  # the last sample picture
    page.get_by_role("link", name="Create").click()
    card = page.locator(f'.style-card[data-style="{name}-style"]')
    card.locator("img").wait_for()
    card.click()  # use the new LoRA: its style brings it and its trigger word
    small_images(page, steps=2, batch=1)
    page.get_by_label("Prompt", exact=True).fill("a tiled wall")
    page.get_by_role("button", name="Generate").click()
    (image_id,) = wait_done(newest_run(page), 1)
    with running_stack.http() as http:
        record = http.get(f"/v1/images/{image_id}").json()
    assert [lora["name"] for lora in record["loras"]] == [name]
    assert "sksuitest" in record["prompt"]
