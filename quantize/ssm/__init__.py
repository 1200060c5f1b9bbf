"""Structured Semantic Mapping (SSM) building blocks shared by the teacher and the student."""
