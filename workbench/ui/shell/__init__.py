"""The window around the tabs: the main window, the model bar, the theme, the log, start-up."""
