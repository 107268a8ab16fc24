"""Chapter 03 in a real browser: the √d_k slider is moved with the keyboard in JupyterLab and
the picture and message of the widget must change; then the scaling checkbox is clicked."""

import pytest

from tests.browser import image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.softmax_scaling import softmax_scaling\n"
    "show(softmax_scaling())",
]


@pytest.mark.browser
def test_softmax_scaling_slider_moves_in_browser(lab):
    page = lab.run_cells(CELLS)
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="d_k").first
    widget.scroll_into_view_if_needed()
    message = widget.locator(".widget-html-content").first
    image = widget.locator("img").first
    page.wait_for_function("el => el.innerText.includes('d_k = 64')",
                           arg=message.element_handle(), timeout=30_000)
    before_src = image.get_attribute("src")

    # The slider steps through powers of two; End jumps to the widest setting, 4096.
    widget.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")
    page.wait_for_function("el => el.innerText.includes('d_k = 4096')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before_src], timeout=30_000)
    scaled_src = image.get_attribute("src")

    # Switching the scaling off at d_k = 4096 saturates the softmax: a warning, a new picture.
    widget.locator("input[type=checkbox]").first.click()
    page.wait_for_function("el => el.innerText.includes('saturated')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), scaled_src], timeout=30_000)
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)                 # not stretched to the output


CELLS_TRAINED = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.attention_explorer import attention_explorer\n"
    "from utils.widgets.rate_temperature import rate_temperature\n"
    "show(attention_explorer())",
    "show(rate_temperature(verdict=False))",   # as the chapter shows it, before exercise 4
]


@pytest.mark.browser
def test_trained_explorer_and_rate_slider_respond_in_browser(lab):
    page = lab.run_cells(CELLS_TRAINED)
    explorer = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="layer").first
    explorer.scroll_into_view_if_needed()
    message = explorer.locator(".widget-html-content").last
    image = explorer.locator("img").first
    page.wait_for_function("el => el.innerText.includes('Layer 0, head 0')",
                           arg=message.element_handle(), timeout=60_000)
    before = image.get_attribute("src")
    # pick head 2 in the dropdown: the message names it and the picture changes
    explorer.locator("select").nth(2).select_option("2")
    page.wait_for_function("el => el.innerText.includes('Layer 0, head 2')",
                           arg=message.element_handle(), timeout=60_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before], timeout=30_000)
    natural, shown = image_widths(explorer)
    assert shown == natural, (natural, shown)

    # Characters the model never saw: the message says so, the arcs give way to the grey
    # placeholder (a narrower picture) and no query button of the old line is left.
    head_src = image.get_attribute("src")
    text_box = explorer.locator("input[type=text]").first
    text_box.fill("naïve café")
    text_box.press("Enter")
    page.wait_for_function("el => el.innerText.includes('only knows the 76 characters')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), head_src], timeout=30_000)
    placeholder, _ = image_widths(explorer)
    assert placeholder < natural / 2, (placeholder, natural)
    assert not explorer.locator(".widget-toggle-buttons").first.is_visible()
    assert explorer.locator("select").first.input_value() == "(type your own)"
    text_box.fill("To be")                           # a line it knows: five buttons, a picture
    text_box.press("Enter")
    page.wait_for_function("el => el.innerText.includes('5 characters')",
                           arg=message.element_handle(), timeout=30_000)
    buttons = explorer.locator(".widget-toggle-buttons").first
    assert buttons.is_visible() and buttons.locator("button").count() == 5
    assert explorer.locator("select").first.input_value() == "(type your own)"

    slider = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="c").last
    slider.scroll_into_view_if_needed()
    rate_message = slider.locator(".widget-html-content").last
    rate_image = slider.locator("img").first
    page.wait_for_function("el => el.innerText.includes('c = 1.00')",
                           arg=rate_message.element_handle(), timeout=30_000)
    before = rate_image.get_attribute("src")
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")                      # c = 6: a new picture, and still no verdict
    page.wait_for_function("el => el.innerText.includes('c = 6.00')",
                           arg=rate_message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[rate_image.element_handle(), before], timeout=30_000)
    assert "within" not in rate_message.inner_text()
