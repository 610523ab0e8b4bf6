"""Development tools (not shipped in the wheel or the image): tiny checkpoints, k8s rendering."""
