"""Keeping the mail archive within its retention: policies per location and for sent mail,
and the purge of files and rows together, never below the legal minimum unless forced.
Imports ``core`` only.
"""
