"""Chapter 00 in a real browser: JupyterLab runs the whole chapter, we move a slider of the
gradient-over-distance widget, and the readout and the plot must change."""

import pytest

from utils.paths import REPO_ROOT


@pytest.mark.browser
def test_chapter_00_runs_and_its_slider_updates_the_widget(lab):
    page = lab.run_notebook(REPO_ROOT / "chapters" / "00_introduction.ipynb")
    widget = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="position t").first
    widget.scroll_into_view_if_needed()
    readout = widget.locator(".widget-html-content").first
    image = widget.locator("img").first
    before_text, before_src = readout.inner_text(), image.get_attribute("src")
    assert "At position 50" in before_text

    # Move the "position t" slider with the keyboard, as a reader would.
    slider = widget.locator(".widget-slider").filter(has_text="position t")
    slider.locator(".noUi-handle").focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    # Each key press moves t by one and the kernel answers with a new readout.
    page.wait_for_function("el => el.innerText.includes('At position 45')",
                           arg=readout.element_handle(), timeout=30_000)
    assert readout.inner_text() != before_text
    page.wait_for_function(
        "([el, old]) => el.getAttribute('src') !== old", arg=[image.element_handle(), before_src],
        timeout=30_000)
