"""pytest plugin: fixtures for synthetic MoE checkpoints."""
