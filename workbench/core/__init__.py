"""The Qt-free core: models, jobs and metrics. Never imports Qt or ``workbench.ui``."""
