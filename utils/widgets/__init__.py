"""Interactive demos, one module per widget family. Each module exposes a function that
builds and returns the widget, so tests can build it, set a control's `.value` and check
what it shows, without a notebook. Helpers they share live in `display.py`."""
