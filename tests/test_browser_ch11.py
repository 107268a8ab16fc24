"""Chapter 11 in a real browser: in JupyterLab, a message is typed into the chat widget and
sent with the Send button and with Enter; the transcript must show it and the reply, a blank
message must get a message instead, and Clear must empty the transcript."""

import pytest

CELLS = [
    "from utils.instructions import add_special_tokens\n"
    "from utils.pretrained import load_pretrained\n"
    "from utils.widgets.chat import chat_widget\n"
    "from utils.widgets.display import show\n"
    "model, tokenizer = add_special_tokens(*load_pretrained('shakespeare-char'))\n"
    "box = chat_widget(model, tokenizer, max_new_tokens=20)\n"
    "show(box, box.snapshot())",
]


@pytest.mark.browser
def test_chat_widget_talks_in_browser(lab):
    page = lab.run_cells(CELLS)
    chat = page.locator(".chat-widget").first
    chat.scroll_into_view_if_needed()
    transcript = chat.locator(".chat-transcript-area .widget-html-content").first
    status = chat.locator(".chat-status .widget-html-content").first
    box = chat.locator("input[type='text']").first
    page.wait_for_function("el => el.innerText.includes('Type a message')",
                           arg=status.element_handle(), timeout=60_000)
    assert transcript.inner_text().strip() == ""

    # record every state of the transcript that shows a reply still being written (▌)
    transcript.evaluate("""el => { window.chatFrames = [];
        new MutationObserver(() => { if (el.innerText.includes('▌'))
            window.chatFrames.push(el.innerText); })
        .observe(el, {childList: true, subtree: true, characterData: true}); }""")
    box.click()
    page.keyboard.type("Who art thou?")                # key by key, as a person types
    chat.get_by_role("button", name="Send").click()
    page.wait_for_function("el => el.innerText.includes('Reply:')",
                           arg=status.element_handle(), timeout=60_000)
    shown = transcript.inner_text()
    assert "You: Who art thou?" in shown and "Model:" in shown, shown
    frames = page.evaluate("window.chatFrames")
    assert len(set(frames)) >= 2, frames                # the reply arrived piece by piece
    assert box.input_value() == ""                      # sent, so the box is empty again

    box.fill("Speak again")
    box.press("Enter")
    page.wait_for_function("el => el.innerText.includes('Speak again')",
                           arg=transcript.element_handle(), timeout=60_000)
    # two replies, the second one written to the end (no cursor: the stream is over)
    page.wait_for_function("el => (el.innerText.match(/Model:/g) || []).length === 2 "
                           "&& !el.innerText.includes('▌')",
                           arg=transcript.element_handle(), timeout=60_000)

    before = transcript.inner_text()
    box.fill("   ")
    chat.get_by_role("button", name="Send").click()
    page.wait_for_function("el => el.innerText.includes('empty')",
                           arg=status.element_handle(), timeout=30_000)
    assert transcript.inner_text() == before            # nothing was sent

    chat.get_by_role("button", name="Clear").click()
    page.wait_for_function("el => el.innerText.includes('Cleared')",
                           arg=status.element_handle(), timeout=30_000)
    assert transcript.inner_text().strip() == ""
