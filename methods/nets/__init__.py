"""Networks shared by every method, each in one plain-PyTorch file that loads the official checkpoint."""
