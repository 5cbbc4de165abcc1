"""The web UI shows markup in user data as text: prompts, negative prompts, tags, board
names and style presets carrying `<script>`, `<img onerror>`, `<svg onload>` and an
attribute break-out are stored through the API, then shown on the Create page (a run card,
the style grid), in the gallery grid and filters, the detail dialog and the lineage lists.

Every payload sets `window.__xss` if it ever runs. The test checks that it never did, that
no element the payloads describe was created in the page, and that each text appears
literally (the characters, not markup) where it is shown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_web_ui import newest_run, open_ui, small_images, wait_done
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SCRIPT = "<script>window.__xss=1</script>"
IMG = "<img src=x onerror=window.__xss=2>"
SVG = "<svg onload=window.__xss=3>"
BREAKOUT = '"><img src=x onerror=window.__xss=4>'
PAYLOADS = (SCRIPT, IMG, SVG, BREAKOUT)

# Elements only the payloads would create: an <img> with src "x", any <svg> or <script>
# inside the app's own regions (the page's own scripts live in <head>).
INJECTED = """() => {
  const found = [];
  for (const el of document.querySelectorAll('img, svg, script, iframe')) {
    if (el.tagName === 'SCRIPT' && el.closest('head')) continue;
    if (el.tagName === 'IMG' && !/(^|\\/)x$/.test(el.getAttribute('src') || '')) continue;
    found.push(el.outerHTML.slice(0, 120));
  }
  return {xss: window.__xss ?? null, found};
}"""


def assert_nothing_ran(page, where: str) -> None:
    state = page.evaluate(INJECTED)
    assert state == {"xss": None, "found": []}, (where, state)


def text_of(locator) -> str:
    return locator.text_content() or ""


@pytest.fixture
def marked(running_stack: RunningStack) -> Iterator[dict]:
    """An image (and its upscaled child) whose prompt, negative prompt and tags carry every
    payload, on a board and beside a style preset whose names and texts carry them too."""
    word = f"xss{uuid.uuid4().hex[:8]}"
    prompt = f"{word} {SCRIPT} {IMG} {SVG} {BREAKOUT}"
    negative = f"{SVG} & {SCRIPT}"
    board_name = f"{SVG}{IMG} {word}"
    style_name = f"xss-{word}"  # names are [A-Za-z0-9 _.()+-]; the texts carry the payloads
    style = {
        "title": f"{SCRIPT}{IMG}",
        "category": SVG,
        "trigger_words": [IMG, BREAKOUT],
        "prompt_template": "{prompt}, " + SVG,
        "negative_prompt": SCRIPT,
    }
    with running_stack.http() as http:
        made = http.post(
            "/v1/generations",
            json={
                "prompt": prompt,
                "negative_prompt": negative,
                "width": 64,
                "height": 64,
                "steps": 2,
                "seed": 11,
            },
        )
        assert made.status_code == 200, made.text
        parent = made.json()["images"][0]["id"]
        upscale = {"mode": "upscale", "image": {"image_id": parent}, "upscale": {"scale": 2}}
        child = http.post("/v1/generations", json=upscale)
        assert child.status_code == 200, child.text
        board = http.post("/v1/boards", json={"name": board_name})
        assert board.status_code == 201, board.text
        patched = http.patch(
            f"/v1/images/{parent}",
            json={"tags": list(PAYLOADS), "board_ids": [board.json()["id"]]},
        )
        assert patched.status_code == 200, patched.text
        put = http.put(f"/v1/styles/{style_name}", json=style)
        assert put.status_code == 200, put.text
        record = http.get(f"/v1/images/{parent}").json()
        assert record["prompt"] == prompt  # stored byte for byte, as the API promises
        assert sorted(record["tags"]) == sorted(PAYLOADS)
        try:
            yield {
                "word": word,
                "prompt": prompt,
                "negative": negative,
                "board": board_name,
                "board_id": board.json()["id"],
                "style": style_name,
                "style_body": style,
                "parent": parent,
                "tags": record["tags"],  # in the gallery's order
                "child": child.json()["images"][0]["id"],
            }
        finally:
            http.delete(f"/v1/styles/{style_name}")
            http.delete(f"/v1/boards/{board.json()['id']}")


def test_markup_in_prompts_tags_boards_and_styles_is_shown_as_text(
    page, running_stack: RunningStack, marked: dict
) -> None:
    # -- Create: the style grid, and a run card for a prompt typed with markup ------------
    open_ui(page)
    card = page.locator(f'#style-grid .style-card[data-style="{marked["style"]}"]')
    card.wait_for()
    style = marked["style_body"]
    assert text_of(card.locator(".style-title")) == style["title"]
    assert text_of(card.locator(".style-category")) == style["category"]
    assert ", ".join(style["trigger_words"]) in (card.get_attribute("title") or "")
    assert_nothing_ran(page, "style grid")

    typed = f"{marked['word']} typed {IMG} {SCRIPT}"
    small_images(page, steps=2, batch=1)
    page.get_by_label("Prompt", exact=True).fill(typed)
    page.get_by_label("Prompt", exact=True).press("Enter")
    run = newest_run(page)
    wait_done(run, 1)
    assert text_of(run.locator(".run-prompt")) == typed
    assert_nothing_ran(page, "run card")
    screenshot(page, "escaping-create")

    # -- Gallery: the grid (titles, alt texts) and the board filter ----------------------
    open_ui(page, "/#/gallery")
    page.get_by_label("Search prompts").fill(marked["word"])
    tile = page.locator(f'#gallery-grid .tile[data-image-id="{marked["parent"]}"]')
    tile.wait_for()
    assert tile.locator("a.tile-image").get_attribute("title") == marked["prompt"]
    assert tile.locator("img").get_attribute("alt") == marked["prompt"]
    board_option = page.locator(f'#gallery-board option[value="{marked["board_id"]}"]')
    assert text_of(board_option).startswith(marked["board"])
    assert_nothing_ran(page, "gallery grid")
    screenshot(page, "escaping-gallery")

    # -- Detail: every parameter, the tags, the boards ----------------------------------
    tile.locator("a.tile-image").click()
    dialog = page.locator("#detail")
    page.wait_for_function(
        f"() => document.getElementById('detail').dataset.imageId === '{marked['parent']}'"
    )
    assert text_of(dialog.locator('dd[data-param="prompt"]')) == marked["prompt"]
    assert text_of(dialog.locator('dd[data-param="negative_prompt"]')) == marked["negative"]
    assert text_of(dialog.locator('dd[data-param="tags"]')) == ", ".join(marked["tags"])
    assert page.locator("#detail-tags").input_value() == ", ".join(marked["tags"])
    board_check = dialog.locator(f'#detail-boards input[data-board-id="{marked["board_id"]}"]')
    expect(board_check).to_be_checked()
    label = dialog.locator(
        "#detail-boards label", has=page.locator(f'input[data-board-id="{marked["board_id"]}"]')
    )
    assert text_of(label) == marked["board"]
    dialog.locator(f'#detail-descendants [data-image-id="{marked["child"]}"] a').wait_for()
    assert_nothing_ran(page, "detail")
    screenshot(page, "escaping-detail")

    # -- Lineage: the child's ancestor is labelled with the marked prompt ------------------
    dialog.locator(f'#detail-descendants [data-image-id="{marked["child"]}"] a').click()
    ancestor = dialog.locator(f'#detail-ancestors [data-image-id="{marked["parent"]}"] a')
    ancestor.wait_for()
    assert ancestor.get_attribute("title") == marked["prompt"]
    assert ancestor.get_attribute("aria-label") == marked["prompt"]
    assert_nothing_ran(page, "lineage")
    screenshot(page, "escaping-lineage")

    # "Use these parameters" puts the prompt back into the form as text
    page.goto(f"/#/image/{marked['parent']}")
    page.wait_for_function(
        f"() => document.getElementById('detail').dataset.imageId === '{marked['parent']}'"
    )
    dialog.get_by_role("button", name="Use these parameters").click()
    page.wait_for_function("() => location.hash === '#/create'")
    assert page.get_by_label("Prompt", exact=True).input_value() == marked["prompt"]
    assert_nothing_ran(page, "use these parameters")


def test_the_api_still_answers_markup_as_json_text(
    running_stack: RunningStack, marked: dict
) -> None:
    """What the UI reads is JSON text, never HTML: the listing endpoints answer
    `application/json` with the payloads as strings."""
    with httpx.Client(base_url=running_stack.base_url, timeout=60) as http:
        image = http.get(f"/v1/images/{marked['parent']}")
        assert image.headers["content-type"].startswith("application/json")
        assert sorted(image.json()["tags"]) == sorted(PAYLOADS)
        boards = http.get("/v1/boards").json()["boards"]
        assert marked["board"] in {b["name"] for b in boards}
        styles = {s["name"]: s for s in http.get("/v1/styles").json()}
        assert styles[marked["style"]]["title"] == marked["style_body"]["title"]
