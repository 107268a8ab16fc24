"""Chapter 01 in a real browser: typing into the tokenizer playground re-cuts the text, the
chart is shown at its own size, and emptying the box greys the chart."""

import pytest

from tests.browser import image_widths

SETUP = ("from utils.widgets.tokenizer_playground import tokenizer_playground\n"
         "from utils.widgets.display import show\n"
         "show(tokenizer_playground())")


@pytest.mark.browser
def test_tokenizer_playground_in_browser(lab):
    page = lab.run_cells([SETUP])
    pieces = page.locator(".jupyter-widgets.widget-html").first
    pieces.wait_for(timeout=60_000)
    page.get_by_text("tokens").first.wait_for(timeout=60_000)
    before = pieces.inner_text()
    box = page.locator(".jupyter-widgets textarea").first
    box.fill("Methinks the winter doth protest")
    box.press("Tab")  # continuous_update=False: the value is sent when the box loses focus
    page.wait_for_function(
        "before => { const el = document.querySelector('.jupyter-widgets.widget-html');"
        " return el && el.innerText !== before && el.innerText.includes('doth'); }",
        arg=before, timeout=60_000)
    after = pieces.inner_text()
    assert after != before and "char: 32 tokens" in after.replace("\n", " ")

    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has=box).first
    natural, shown = image_widths(widget)
    assert shown == natural, (natural, shown)                 # not stretched to the output

    # An empty box: the message asks for text and the chart gives way to the grey placeholder.
    chart_src = widget.locator("img").first.get_attribute("src")
    box.fill("")
    box.press("Tab")
    page.get_by_text("Type some text").first.wait_for(timeout=60_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[widget.locator("img").first.element_handle(), chart_src],
                           timeout=30_000)
