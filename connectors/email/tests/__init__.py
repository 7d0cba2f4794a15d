"""Tests of the email connector."""
