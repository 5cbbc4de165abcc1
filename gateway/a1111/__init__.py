"""The AUTOMATIC1111-compatible API (`/sdapi/v1`)."""
