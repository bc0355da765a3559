"""Federated-learning round instrumentation over real and emulated links (see issue: flsim)."""
