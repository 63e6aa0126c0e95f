"""Tests of the CoDD prior."""
