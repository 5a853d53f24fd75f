"""An app module that fails while being imported, as a user's module with a bug would."""

from __future__ import annotations

from asyncq import App

app = App("broken-app")

SETTINGS = {"retries": 3}
LIMIT = SETTINGS["retry"]  # the bug the CLI must point at: this file, this line
