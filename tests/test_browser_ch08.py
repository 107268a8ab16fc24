"""Chapter 08 in a real browser: in JupyterLab, the next-token explorer's temperature slider is
moved with the keyboard and the step generator's "next token" button clicked; the picture,
the message and the timings must change."""

import pytest

from tests.browser import image_widths

CELLS = [
    "from utils.widgets.display import show\n"
    "from utils.widgets.sampling import next_token_explorer, step_generator\n"
    "show(next_token_explorer())",
    "show(step_generator(prompt='KING:\\n'))",
]


@pytest.mark.browser
def test_sampling_widgets_respond_in_browser(lab):
    page = lab.run_cells(CELLS)
    explorer = page.locator(".jupyter-widgets.widget-vbox").filter(has_text="top-p").first
    explorer.scroll_into_view_if_needed()
    message = explorer.locator(".widget-html-content").last
    image = explorer.locator("img").first
    page.wait_for_function("el => el.innerText.includes('76 of 76')",
                           arg=message.element_handle(), timeout=30_000)
    before = image.get_attribute("src")
    # temperature slider to 0 (Home): greedy, a single character can be sampled
    explorer.locator(".noUi-handle").first.focus()
    page.keyboard.press("Home")
    page.wait_for_function("el => el.innerText.includes('1 of 76')",
                           arg=message.element_handle(), timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[image.element_handle(), before], timeout=30_000)

    natural, shown = image_widths(explorer)
    assert shown == natural, (natural, shown)                 # its own size, not stretched

    stepper = page.locator(".jupyter-widgets.widget-vbox").filter(
        has=page.get_by_role("button", name="next token")).last
    stepper.scroll_into_view_if_needed()
    # the timings table is the last HTML output; its container stays while the table is redrawn
    table = stepper.locator(".widget-html-content").last
    page.wait_for_function("el => el.innerText.includes('prefill')",
                           arg=table.element_handle(), timeout=30_000)
    stepper.get_by_role("button", name="next token").click()
    stepper.get_by_role("button", name="next token").click()
    page.wait_for_function("el => (el.innerText.match(/decode/g) || []).length >= 2",
                           arg=table.element_handle(), timeout=30_000)
