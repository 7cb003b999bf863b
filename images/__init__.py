"""The catalogue of OS images and OS definitions instances are built from (data plus a loader)."""
