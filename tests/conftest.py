"""Fixtures shared by the whole suite: the tokenizer and tiny model, the local S3 server,
and the running stack. Registered once here so session fixtures really run once."""

pytest_plugins = [
    "tests.model_fixtures",
    "tests.s3_fixtures",
    "tests.stack_fixtures",
    "tests.postgres_fixtures",
]
