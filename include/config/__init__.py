"""Config: a segment's YAML file, read safely (`segment_file`), validated (`segments`), and
skeletons written from a vendor's cohorts (`discovery`)."""
