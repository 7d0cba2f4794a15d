"""Tests of the slack connector."""
