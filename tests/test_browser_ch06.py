"""Chapter 06 in a real browser: in JupyterLab, the mask explorer's attention toggle is clicked
and its padding slider moved with the keyboard; the picture and the message must change."""

import pytest

from tests.browser import image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.mask_explorer import mask_explorer\n"
    "show(mask_explorer())",
]


@pytest.mark.browser
def test_mask_explorer_toggles_in_browser(lab):
    page = lab.run_cells(CELLS)
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="attention").first
    widget.scroll_into_view_if_needed()
    message = widget.locator(".widget-html-content").last
    image = widget.locator("img").first
    page.wait_for_function("el => el.innerText.includes('21 of 36')",
                           arg=message.element_handle(), timeout=30_000)
    causal_src = image.get_attribute("src")

    # Bidirectional: every one of the 6 x 6 pairs may attend; a new picture.
    widget.get_by_role("button", name="bidirectional").click()
    page.wait_for_function("el => el.innerText.includes('36 of 36')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), causal_src], timeout=30_000)
    bidirectional_src = image.get_attribute("src")

    # The padding slider: End jumps to the most padding tokens.
    widget.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")
    page.wait_for_function("el => el.innerText.includes('4 padding on the right')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), bidirectional_src], timeout=30_000)
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)                 # not stretched to the output

    # An empty sentence: the message asks for one and the three panels give way to the grey
    # placeholder (a narrower picture), so no old mask stays next to the message.
    padded_src = image.get_attribute("src")
    widget.locator("input[type=text]").first.fill("")
    widget.locator("input[type=text]").first.press("Enter")
    page.wait_for_function("el => el.innerText.includes('Type a sentence')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), padded_src], timeout=30_000)
    placeholder, _ = image_widths(widget)
    assert placeholder < natural / 2, (placeholder, natural)
