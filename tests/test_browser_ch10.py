"""Chapter 10 in a real browser: in JupyterLab, the LoRA explorer's rank slider is moved with the
keyboard and a target-layer checkbox clicked; the trainable-parameter text and the picture
must change."""

import pytest

from tests.browser import image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.lora_explorer import lora_explorer\n"
    "show(lora_explorer())",
]


@pytest.mark.browser
def test_lora_explorer_responds_in_browser(lab):
    page = lab.run_cells(CELLS)
    explorer = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="LoRA explorer").first
    explorer.scroll_into_view_if_needed()
    # the title is the first HTML output, the message the last
    message = explorer.locator(".widget-html-content").last
    image = explorer.locator("img").first
    # default: rank 8 on qkv + proj of 6 blocks = 6 * 8 * ((128 + 384) + (128 + 128))
    page.wait_for_function("el => el.innerText.includes('36,864 trainable')",
                           arg=message.element_handle(), timeout=60_000)
    before = image.get_attribute("src")

    # one step right on the rank slider: rank 16 trains twice as many numbers
    explorer.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("el => el.innerText.includes('Rank 16') "
                           "&& el.innerText.includes('73,728 trainable')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before], timeout=30_000)

    # the rank slider gives each rank room (a small drag is one step), the picture its own size
    track = explorer.locator(".noUi-target").first.bounding_box()
    assert track["width"] / 7 >= 40, track
    natural, shown = image_widths(explorer)
    assert shown == natural, (natural, shown)

    # adding the MLP's up projection (128 -> 512) wraps 6 more layers
    explorer.get_by_text("MLP up").click()
    page.wait_for_function("el => el.innerText.includes('18 layers wrapped')",
                           arg=message.element_handle(), timeout=30_000)
