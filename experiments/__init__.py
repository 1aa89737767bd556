"""The Fashion-MNIST experiment harness: reproduces the reference report with our layers and torch.nn."""
