"""Tests of the nats connector."""
