"""Accounts and roles: researcher, annotator, admin."""
