"""Training: fine-tuning runs in their own process, their folders, and reading their progress back."""
