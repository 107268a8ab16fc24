"""Chapter 07 in a real browser: the live loss-curve widget is fed training events from the
kernel (as the trainer's callback would) and its picture must change; then its smoothing slider
is moved with the keyboard and the log-scale checkbox clicked, and the picture changes again."""

import pytest

from tests.browser import image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.training_curves import training_curves\n"
    "curves = training_curves(reference={'bigram': 2.49}, min_interval_s=0.0)\n"
    "show(curves)",
    "import math\n"
    "curves.update({'event': 'eval', 'step': 0, 'train': 4.33, 'val': 4.34})\n"
    "for s in range(1, 201):\n"
    "    curves.update({'event': 'train', 'step': s, 'loss': 1.6 + 2.7 * math.exp(-s / 40)\n"
    "                   + 0.2 * math.sin(s), 'lr': 1e-3})\n"
    "curves.update({'event': 'eval', 'step': 200, 'train': 1.70, 'val': 1.83})",
]


@pytest.mark.browser
def test_training_curves_update_and_controls_in_browser(lab):
    page = lab.run_cells(CELLS)
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="smoothing").first
    widget.scroll_into_view_if_needed()
    message = widget.locator(".widget-html-content").first
    image = widget.locator("img").first
    # the second cell's events reached the widget shown by the first cell
    page.wait_for_function("el => el.innerText.includes('val 1.830')",
                           arg=message.element_handle(), timeout=30_000)
    fed_src = image.get_attribute("src")

    widget.locator(".noUi-handle").first.focus()
    page.keyboard.press("End")                       # smoothing 10 -> 50
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), fed_src], timeout=30_000)
    smoothed_src = image.get_attribute("src")

    widget.locator("input[type=checkbox]").first.click()     # log scale
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), smoothed_src], timeout=30_000)
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)                 # its own size, not stretched
