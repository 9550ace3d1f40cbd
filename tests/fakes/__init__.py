"""Test doubles that implement real interfaces over real transports (no SDK mocks)."""
