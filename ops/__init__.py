"""Pure operators: numpy (or cupy) in, numpy out, and file formats.

No celery, no redis, no environment: every parameter is passed in. Heavy libraries (ITK,
pydicom, tritonclient) are imported inside the functions that use them.
"""
