"""facegan: train face GANs with MLflow tracking and pick the best checkpoint before collapse."""

__version__ = "0.1.0"
