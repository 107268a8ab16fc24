"""Chapter 09 in a real browser: in JupyterLab, the KV-cache calculator's batch and context
sliders are moved with the keyboard and a model picked from the dropdown; the numbers and the
picture must change."""

import pytest

from tests.browser import clipped_texts, image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.kv_memory import kv_memory_calculator\n"
    "show(kv_memory_calculator())",
]


@pytest.mark.browser
def test_kv_memory_calculator_responds_in_browser(lab):
    page = lab.run_cells(CELLS)
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="K/V heads").first
    widget.scroll_into_view_if_needed()
    message = widget.locator(".widget-html-content").last
    image = widget.locator("img").first
    page.wait_for_function("el => el.innerText.includes('131,072 tokens × batch 1: 16 GiB')",
                           arg=message.element_handle(), timeout=30_000)
    before = image.get_attribute("src")

    # batch slider to its maximum (End): 64 sequences need 64 times the cache
    batch = widget.locator(".widget-slider").filter(has_text="batch").first
    batch.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")
    page.wait_for_function("el => el.innerText.includes('batch 64: 1,024 GiB')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before], timeout=30_000)

    # context slider to its minimum (Home): 128 tokens
    context = widget.locator(".widget-slider").filter(has_text="context").first
    context.locator(".noUi-handle").first.focus()
    page.keyboard.press("Home")
    page.wait_for_function("el => el.innerText.includes('128 tokens × batch 64')",
                           arg=message.element_handle(), timeout=30_000)

    # a model with multi-head latent attention: its context and numbers are copied in
    widget.locator("select").first.select_option("DeepSeek-V3")
    page.wait_for_function("el => el.innerText.includes('MLA: each token adds 70,272 B')",
                           arg=message.element_handle(), timeout=30_000)

    # "MQA", "MLA latent" and the other labels fit; the bars are shown at their own size
    assert clipped_texts(widget) == []
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)

    # DeepSeek-V3 -> custom -> GQA: a grouped cache, not MHA under a GQA label
    widget.locator("select").first.select_option("custom")
    widget.get_by_role("button", name="GQA").click()
    page.wait_for_function("el => el.innerText.startsWith('GQA: each token adds')",
                           arg=message.element_handle(), timeout=30_000)
