"""Turning rankings into preference datasets. Django-free: records in, rows and files out.

``pairs`` expands one ranking into ordered pairs under a tie policy, ``aggregate`` counts
votes across annotators and fits Bradley-Terry strengths, ``splits`` assigns prompts to
train/validation/test, ``formats`` streams rows to Parquet, JSONL and Hugging Face datasets,
and ``card`` writes the dataset card.
"""
