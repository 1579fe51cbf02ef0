"""Plotly figures the pages draw; plain functions of arrays and frames, testable without Streamlit."""

from __future__ import annotations
