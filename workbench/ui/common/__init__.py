"""What the tabs share: the model worker thread, saved controls, form helpers, charts, the web view."""
