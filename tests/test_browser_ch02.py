"""Chapter 02 in a real browser: the positional-encoding explorer reacts to its controls."""

import pytest

from tests.browser import image_widths

SETUP = ("from utils.widgets.positional_explorer import positional_explorer\n"
         "from utils.widgets.display import show\n"
         "show(positional_explorer())")


def _image_src(page) -> str:
    image = page.locator(".widget-image").first
    image.wait_for(timeout=60_000)
    return image.get_attribute("src")


@pytest.mark.browser
def test_positional_explorer_in_browser(lab):
    page = lab.run_cells([SETUP])
    before = _image_src(page)
    assert before
    page.locator(".widget-dropdown select").first.select_option("RoPE")
    # the kernel redraws and sends new PNG bytes; the browser swaps the image's blob URL
    page.wait_for_function(
        "before => { const img = document.querySelector('.widget-image');"
        " return img && img.src && img.src !== before; }", arg=before, timeout=60_000)
    assert _image_src(page) != before
    page.get_by_text("rotated by").first.wait_for(timeout=30_000)  # the caption followed
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="encoding").first
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)                 # not stretched to the output
