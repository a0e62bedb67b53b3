"""Matching: staged source users x Netmera user table → members, counts and reasons.

Knows nothing of Airflow. See DESIGN.md "Matching" for the rules implemented here.
"""
