"""Chapter 05 in a real browser: the calculator's layer slider is moved with the keyboard in
JupyterLab and the parameter count and picture must change; then a preset is picked."""

import pytest

from tests.browser import clipped_texts, image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.model_calculator import model_calculator\n"
    "show(model_calculator())",
]


@pytest.mark.browser
def test_model_calculator_slider_moves_in_browser(lab):
    page = lab.run_cells(CELLS)
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="KV heads").first
    widget.scroll_into_view_if_needed()
    message = widget.locator(".widget-html-content").last
    image = widget.locator("img").first
    page.wait_for_function("el => el.innerText.includes('124M parameters')",
                           arg=message.element_handle(), timeout=30_000)
    before_src = image.get_attribute("src")

    # The "layers" slider is the second slider; End jumps to its maximum, 128 layers.
    layers = widget.locator(".widget-slider").filter(has_text="layers").first
    layers.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")
    page.wait_for_function("el => !el.innerText.includes('124M parameters') && "
                           "el.innerText.includes('parameters')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before_src], timeout=30_000)

    # Picking a preset from the dropdown sets every control at once.
    widget.locator("select").first.select_option("Llama-3-8B")
    page.wait_for_function("el => el.innerText.includes('8.03B parameters')",
                           arg=message.element_handle(), timeout=30_000)

    # the picture at its own size; the GELU/SwiGLU toggle on one line; no label cut short
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)
    tops = widget.locator(".widget-toggle-button").evaluate_all(
        "buttons => buttons.map(b => Math.round(b.getBoundingClientRect().top))")
    assert len(tops) == 2 and tops[0] == tops[1], tops
    assert clipped_texts(widget) == []
