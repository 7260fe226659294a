"""Tables of the admin issue (kept apart so parallel work does not collide in models.py)."""

from __future__ import annotations
