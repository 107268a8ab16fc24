"""Chapter 03 in a real browser: the √d_k slider is moved with the keyboard in JupyterLab and
the picture and message of the widget must change; then the scaling checkbox is clicked."""

import pytest

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
