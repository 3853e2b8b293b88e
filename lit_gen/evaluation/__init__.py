"""Evaluation shared by every family: likelihood accounting, Inception features, metrics, reports."""
