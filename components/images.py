"""Container images the components run in (built from images/; see images/README.md)."""

TOOLS_IMAGE = "ghcr.io/keye-project/keye-tools:0.1.0"
TRAIN_IMAGE = "ghcr.io/keye-project/keye-train:0.1.0"
